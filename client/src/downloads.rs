//! downloads (to be written)
