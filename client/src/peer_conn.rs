//! peer_conn (to be written)
