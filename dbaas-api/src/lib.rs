//! The Trove v1.0 compatible control plane and the K2HR3-style service (issues 5 and 6).
