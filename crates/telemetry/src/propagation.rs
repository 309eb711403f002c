//! W3C trace context (`traceparent`, `tracestate`) in NATS headers.
//!
//! ```
//! use opentelemetry::trace::TraceContextExt;
//! use sagaflow_telemetry::propagation::{extract_context, inject_context, parse_traceparent};
//!
//! let parent = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
//! let cx = opentelemetry::Context::new().with_remote_span_context(parent.clone());
//! let mut headers = async_nats::HeaderMap::new();
//! inject_context(&cx, &mut headers);
//! assert_eq!(
//!     headers.get("traceparent").map(|v| v.as_str()),
//!     Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
//! );
//! let back = extract_context(&headers);
//! assert_eq!(back.span().span_context().span_id(), parent.span_id());
//! ```

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header's name.
pub const TRACESTATE: &str = "tracestate";

/// Writes trace context into NATS headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace context from NATS headers.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the span context of `cx` (if it has a valid one) as `traceparent`
/// and `tracestate` headers.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    }
}

/// The span context carried by `headers`, as the (remote) parent of a new
/// span; an empty context when there is none or it is malformed.
pub fn extract_context(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The current context: the current `tracing` span's OpenTelemetry context
/// when it has one, else OpenTelemetry's own current context.
pub fn current_context() -> Context {
    let from_tracing = tracing::Span::current().context();
    if from_tracing.span().span_context().is_valid() {
        from_tracing
    } else {
        Context::current()
    }
}

/// Writes the current context (see [`current_context`]) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_context(&current_context(), headers);
}

/// The `traceparent` of the current context, if there is one.
pub fn current_traceparent() -> Option<String> {
    format_traceparent(current_context().span().span_context())
}

/// Makes the span context carried by `headers` (if any) the parent of
/// `span`, a `tracing` span not entered yet: under the OpenTelemetry layer
/// installed by [`crate::init`], `span` and everything inside it join the
/// sender's trace. Returns whether a parent was set.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) -> bool {
    let Some(headers) = headers else {
        return false;
    };
    if headers.get(TRACEPARENT).is_none() {
        return false;
    }
    let cx = extract_context(headers);
    cx.span().span_context().is_valid() && span.set_parent(cx).is_ok()
}

/// Makes `cx` (if it has a valid span context) the parent of `span`, a
/// `tracing` span not entered yet. Returns whether a parent was set.
pub fn set_parent_context(span: &tracing::Span, cx: &Context) -> bool {
    cx.span().span_context().is_valid() && span.set_parent(cx.clone()).is_ok()
}

/// The `traceparent` of a `tracing` span under the OpenTelemetry layer;
/// `None` when it is not traced.
pub fn span_traceparent(span: &tracing::Span) -> Option<String> {
    format_traceparent(span.context().span().span_context())
}

/// `00-TRACE_ID-SPAN_ID-FLAGS`; `None` for an invalid span context.
pub fn format_traceparent(sc: &SpanContext) -> Option<String> {
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// Parses a `traceparent` (version 00 layout; later versions are read by
/// their first four fields, as the W3C specification asks). `None` when it
/// is malformed or names the all-zero trace or span.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let text = text.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The trace id (32 hex digits) of a `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|sc| sc.trace_id().to_string())
}

/// [`trace_id_of`] when the `traceparent`'s trace is sampled (its spans are
/// exported); `None` otherwise: there is nothing to look up.
pub fn sampled_trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent)
        .filter(|sc| sc.is_sampled())
        .map(|sc| sc.trace_id().to_string())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparents_round_trip() {
        let sc = parse_traceparent(TP).unwrap();
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert_eq!(format_traceparent(&sc).as_deref(), Some(TP));
        assert_eq!(
            trace_id_of(TP).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        let unsampled = parse_traceparent(&TP.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn only_a_sampled_trace_has_an_id_to_look_up() {
        assert_eq!(
            sampled_trace_id_of(TP).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(sampled_trace_id_of(&TP.replace("-01", "-00")), None);
        assert_eq!(sampled_trace_id_of("garbage"), None);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn headers_carry_the_context_both_ways() {
        let sc = parse_traceparent(TP).unwrap();
        let sc = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut headers = HeaderMap::new();
        inject_context(&cx, &mut headers);
        assert_eq!(headers.get(TRACEPARENT).map(|v| v.as_str()), Some(TP));
        assert_eq!(
            headers.get(TRACESTATE).map(|v| v.as_str()),
            Some("vendor=x")
        );
        let back = extract_context(&headers);
        let back = back.span().span_context().clone();
        assert_eq!(format_traceparent(&back).as_deref(), Some(TP));
        assert_eq!(back.trace_state().get("vendor"), Some("x"));
    }

    #[test]
    fn nothing_is_injected_without_a_span_and_nothing_extracted_from_junk() {
        let mut headers = HeaderMap::new();
        inject_context(&Context::new(), &mut headers);
        assert!(headers.get(TRACEPARENT).is_none());
        headers.insert(TRACEPARENT, "garbage");
        assert!(!extract_context(&headers).span().span_context().is_valid());
    }
}
