//! silo-client (under construction)
