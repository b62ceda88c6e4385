pub mod api_client;
pub mod pg_pair;
pub mod process;
pub mod proxy;
