//! A k2hdkc server node: memcached and native front-ends over the storage engine, admin HTTP
//! listener (issue 3), and cluster membership (issue 4).
