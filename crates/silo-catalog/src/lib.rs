//! silo-catalog (under construction)
