pub mod api_client;
pub mod process;
pub mod proxy;
pub mod sentinel;
