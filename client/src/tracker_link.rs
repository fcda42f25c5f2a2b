//! tracker_link (to be written)
