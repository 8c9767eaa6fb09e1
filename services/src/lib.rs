//! Shared service types. Filled in by the KMS issue (#3); intentionally empty until then.
