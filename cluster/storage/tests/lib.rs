//! storage integration tests
