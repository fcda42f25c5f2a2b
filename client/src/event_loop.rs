//! event_loop (to be written)
