//! JSON bodies of the REST APIs, shared by the servers and the SDK.

pub mod aggregator;
pub mod kms;
