//! # sagaflow-asl
//!
//! The pure core of Sagaflow: the Amazon States Language (JSONPath mode)
//! model, parser and validator, JSONPath, intrinsic functions, Choice rules,
//! and the interpreter as a deterministic state machine.
//!
//! Nothing here does I/O, reads a clock or draws randomness: time and a
//! random seed come in with the events. The same definition and the same
//! events always give the same commands, which is what makes replay,
//! recovery and simulation possible.

#![warn(missing_docs)]

pub mod choice;
pub mod errors;
pub mod interp;
pub mod intrinsics;
pub mod model;
pub mod parse;
pub mod path;
pub mod rand;
