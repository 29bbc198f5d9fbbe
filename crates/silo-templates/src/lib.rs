//! silo-templates (under construction)
