//! Guest agent: supervises the node process, answers Trove guest RPC, sends heartbeats (issue 6).
