//! `streams-kafka`: a driver of the streams toolkit (work in progress).
