//! storage (to be written)
