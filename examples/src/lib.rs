//! Runnable examples of the streams toolkit live in `examples/`.
