//! silo-node (under construction)
