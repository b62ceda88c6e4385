pub mod process;
pub mod proxy;
