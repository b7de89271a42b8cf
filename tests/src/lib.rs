//! Helpers shared by the system tests (process harness, port allocation). The tests come with
//! the server (issue 3) and the cluster (issue 4).
