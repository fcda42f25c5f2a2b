//! hasher (to be written)
