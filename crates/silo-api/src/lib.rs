//! silo-api (under construction)
