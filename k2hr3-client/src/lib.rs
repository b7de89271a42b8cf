//! Typed client of the K2HR3-compatible RBAC/resource service (issue 5).
