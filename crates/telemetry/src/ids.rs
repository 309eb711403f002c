//! Span ids chosen by Sagaflow.
//!
//! A durable execution's spans are emitted when they end, possibly by
//! another process than the one that started them, and their children (task
//! spans, participants' handler spans) name them as parents before that.
//! Their ids are therefore fixed in advance (derived from the execution
//! span's id and the state's path) and handed to the SDK through
//! [`SagaflowIdGenerator`], which the providers made by [`crate::init`] use.
//! A tracer provider built elsewhere must use it too
//! (`.with_id_generator(SagaflowIdGenerator::default())`), or the execution's
//! spans get random ids and the tree falls apart.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

thread_local! {
    static NEXT: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Random ids, unless Sagaflow asked for given ones for the span being built
/// on this thread.
#[derive(Debug, Default)]
pub struct SagaflowIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for SagaflowIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        let (trace, span) = NEXT.get();
        match trace {
            Some(t) => {
                NEXT.set((None, span));
                t
            }
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        let (trace, span) = NEXT.get();
        match span {
            Some(s) => {
                NEXT.set((trace, None));
                s
            }
            None => self.random.new_span_id(),
        }
    }
}

/// Runs `build` (which builds exactly one span, synchronously) with the ids
/// the generator hands out set to `trace` (used only for a root span) and
/// `span`.
pub(crate) fn with_ids<T>(trace: TraceId, span: SpanId, build: impl FnOnce() -> T) -> T {
    NEXT.set((Some(trace), Some(span)));
    let out = build();
    NEXT.set((None, None));
    out
}

/// Fresh random ids.
pub(crate) fn random_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// A fresh random span id.
pub(crate) fn random_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// A span id derived from a parent id and some text: the same inputs give
/// the same id in every process.
pub(crate) fn derived_span_id(base: SpanId, parts: &[&[u8]]) -> SpanId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from_be_bytes(base.to_bytes());
    for part in parts {
        for b in *part {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads the bits.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    SpanId::from_bytes(hash.max(1).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let base = SpanId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let a = derived_span_id(base, &[b"state", b"BookFlight", b"0"]);
        assert_eq!(a, derived_span_id(base, &[b"state", b"BookFlight", b"0"]));
        assert_ne!(a, derived_span_id(base, &[b"state", b"BookFlight", b"1"]));
        assert_ne!(a, derived_span_id(base, &[b"state", b"BookFligh", b"t0"]));
        assert_ne!(a, SpanId::INVALID);
    }

    #[test]
    fn the_generator_hands_out_requested_ids_once() {
        let g = SagaflowIdGenerator::default();
        let t = TraceId::from_bytes([9; 16]);
        let s = SpanId::from_bytes([7; 8]);
        let (got_t, got_s) = with_ids(t, s, || (g.new_trace_id(), g.new_span_id()));
        assert_eq!((got_t, got_s), (t, s));
        assert_ne!(g.new_span_id(), s);
        assert_ne!(g.new_trace_id(), t);
    }
}
