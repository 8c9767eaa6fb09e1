//! Benchmarks and the ciphertext-overhead suite. The `he` micro-benchmarks live in `he/benches`; the suite comes with issue #6.
