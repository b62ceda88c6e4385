//! Authentication: Argon2 passwords, HS256 JWTs and a denylist for logout. The extractors
//! that make a handler require a token live with the other extractors, in
//! `crate::http::extract`.

pub mod jwt;
pub mod keys;
pub mod password;
pub mod revocation;
pub mod throttle;
