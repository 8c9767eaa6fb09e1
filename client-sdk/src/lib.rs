//! The CryptFlow client SDK. Not built yet: see issue #5.
