//! picker (to be written)
