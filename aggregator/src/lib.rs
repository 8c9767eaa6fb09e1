//! The aggregator service. Not built yet: see its issue. Nothing here pretends to work.
