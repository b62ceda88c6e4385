//! A real Docker engine (scripts/engine.sh starts one when the machine has none): the
//! service's image built from the shipped Dockerfile, and the shipped compose stack up on
//! the images infra/scripts/local-images.sh makes. The drill that runs on it is
//! [`crate::scenarios::engine`].

pub mod docker;
pub mod image;
pub mod stack;
