//! Runnable examples of the streams toolkit live in `examples/`; this library holds
//! what several of them share.

pub mod payments;
