//! The HTTP Task's `Parameters`, checked and turned into a request plan.

use std::net::{Ipv4Addr, Ipv6Addr};

use reqwest::Method;
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// How array values are written in a URL-encoded body
/// (`Transform.RequestEncodingOptions.ArrayFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayFormat {
    /// `a[0]=x&a[1]=y` (the default).
    Indices,
    /// `a=x&a=y`.
    Repeat,
    /// `a=x,y`.
    Commas,
    /// `a[]=x&a[]=y`.
    Brackets,
}

impl ArrayFormat {
    fn parse(s: &str) -> Option<ArrayFormat> {
        Some(match s {
            "INDICES" | "DEFAULT" => ArrayFormat::Indices,
            "REPEAT" => ArrayFormat::Repeat,
            "COMMAS" => ArrayFormat::Commas,
            "BRACKETS" => ArrayFormat::Brackets,
            _ => return None,
        })
    }
}

/// The request body to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// No body.
    None,
    /// `RequestBody` serialized as JSON (`application/json`).
    Json(Value),
    /// `RequestBody` URL-encoded (`application/x-www-form-urlencoded`).
    Form(String),
}

/// A checked HTTP Task request.
#[derive(Debug, Clone)]
pub struct RequestPlan {
    /// The method.
    pub method: Method,
    /// `ApiEndpoint` with `QueryParameters` appended.
    pub url: Url,
    /// The definition's headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Body,
    /// `Transform.RequestBodyEncoding` is `URL_ENCODED`: a connection's
    /// `BodyParameters` are sent form-encoded, even without a `RequestBody`.
    pub url_encoded: bool,
    /// The connection to use: `Authentication.ConnectionArn` or
    /// `InvocationConfig.ConnectionArn` (the same one when both are given).
    pub connection: Option<String>,
}

impl RequestPlan {
    /// True when the definition set this header (case-insensitively).
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
    }

    /// True when the method may carry a body made only of a connection's
    /// `BodyParameters`: not for `GET`, `HEAD` and `DELETE`, whose request
    /// content has no defined meaning (RFC 9110).
    pub fn takes_body_parameters(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::DELETE)
    }
}

/// Headers a definition may not set: AWS's list of headers an HTTP Task
/// cannot use (it fails with `States.Runtime`; its `Proxy-Authorization`
/// is refused with every `Proxy-*`, below), plus the transport's own
/// `Content-Length` and `Keep-Alive`. Lower case.
const FORBIDDEN_HEADERS: &[&str] = &[
    "a-im",
    "accept-charset",
    "accept-datetime",
    "accept-encoding",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-md5",
    "date",
    "expect",
    "forwarded",
    "from",
    "host",
    "http2-settings",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "max-forwards",
    "origin",
    "pragma",
    "referer",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "warning",
];

/// Prefixes of header names a definition may not use (AWS refuses
/// `X-Forwarded-*`, `X-Amz-*` and `X-Amzn-*`; `Proxy-*` belongs to the
/// transport). Lower case.
const FORBIDDEN_HEADER_PREFIXES: &[&str] = &["x-forwarded", "x-amz", "proxy-"];

/// True when a definition may not set this header (`name` in lower case,
/// as [`HeaderName::as_str`] gives it).
pub fn is_forbidden_header(name: &str) -> bool {
    FORBIDDEN_HEADERS.contains(&name)
        || FORBIDDEN_HEADER_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// True when `url` may carry a connection's credentials: an `https://` URL,
/// or an `http://` one to a loopback host (`localhost`, `127.0.0.0/8`,
/// `::1`), for local testing. AWS allows only HTTPS.
pub fn allows_credentials(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback(url),
        _ => false,
    }
}

/// True when the URL's host is a loopback one: `localhost`, an address in
/// `127.0.0.0/8`, or `::1` (also written as `::ffff:127.x.y.z`).
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // The URL parser has normalised the host: IPv4 addresses are dotted
    // quads, IPv6 ones are bracketed, domains are lower case.
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        });
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return ip.is_loopback();
    }
    host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.")
}

const KNOWN_FIELDS: &[&str] = &[
    "ApiEndpoint",
    "Method",
    "Headers",
    "QueryParameters",
    "RequestBody",
    "Transform",
    "InvocationConfig",
    "Authentication",
];

/// Checks the effective Parameters of an HTTP Task; the message says what
/// is wrong (it never quotes a header value).
pub fn plan(parameters: &Value) -> Result<RequestPlan, String> {
    let Value::Object(p) = parameters else {
        return Err("the HTTP Task's Parameters must be an object".into());
    };
    if let Some(unknown) = p.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown HTTP Task parameter '{unknown}' (known: {})",
            KNOWN_FIELDS.join(", ")
        ));
    }
    let endpoint = match p.get("ApiEndpoint") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("ApiEndpoint must be a string".into()),
        None => return Err("ApiEndpoint is required".into()),
    };
    let mut url = Url::parse(endpoint).map_err(|e| format!("ApiEndpoint is not a URL: {e}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!(
            "ApiEndpoint must be an https:// (or http://) URL, got scheme '{}'",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "ApiEndpoint must not carry credentials; use Authentication.ConnectionArn".into(),
        );
    }
    let method = match p.get("Method") {
        Some(Value::String(m)) => match m.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            "PATCH" => Method::PATCH,
            "OPTIONS" => Method::OPTIONS,
            "HEAD" => Method::HEAD,
            _ => {
                return Err(format!(
                    "Method must be one of GET, POST, PUT, DELETE, PATCH, OPTIONS, HEAD; got '{m}'"
                ));
            }
        },
        Some(_) => return Err("Method must be a string".into()),
        None => return Err("Method is required".into()),
    };

    let mut headers = Vec::new();
    match p.get("Headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("Headers: '{name}' is not a valid header name"))?;
                if is_forbidden_header(header.as_str()) {
                    return Err(format!(
                        "Headers: '{name}' is not allowed in an HTTP Task (see the HTTP Task's \
                         list of refused headers)"
                    ));
                }
                let text = scalar_text(value).ok_or_else(|| {
                    format!("Headers: the value of '{name}' must be a string, number or boolean")
                })?;
                let value = HeaderValue::from_str(&text).map_err(|_| {
                    format!("Headers: the value of '{name}' is not a valid header value")
                })?;
                headers.push((header, value));
            }
        }
        Some(_) => return Err("Headers must be an object".into()),
    }

    match p.get("QueryParameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(q)) => {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in q {
                match value {
                    Value::Array(items) => {
                        for item in items {
                            let text = scalar_text(item).ok_or_else(|| {
                                format!("QueryParameters: '{name}' must hold strings, numbers or booleans")
                            })?;
                            pairs.append_pair(name, &text);
                        }
                    }
                    other => {
                        let text = scalar_text(other).ok_or_else(|| {
                            format!("QueryParameters: '{name}' must be a string, number, boolean or an array of them")
                        })?;
                        pairs.append_pair(name, &text);
                    }
                }
            }
        }
        Some(_) => return Err("QueryParameters must be an object".into()),
    }

    let (url_encoded, format) = match p.get("Transform") {
        None | Some(Value::Null) => (false, ArrayFormat::Indices),
        Some(Value::Object(t)) => transform(t)?,
        Some(_) => return Err("Transform must be an object".into()),
    };

    let body = match p.get("RequestBody") {
        None => Body::None,
        Some(body) if url_encoded => match body {
            Value::Object(fields) => Body::Form(url_encode(fields, format)),
            _ => {
                return Err(
                    "RequestBody must be an object when Transform.RequestBodyEncoding is URL_ENCODED"
                        .into(),
                );
            }
        },
        Some(body) => Body::Json(body.clone()),
    };

    // Only its ConnectionArn is used: there are no VPC Lattice resource
    // configurations to route through, so the other fields are ignored.
    let invocation_connection = match p.get("InvocationConfig") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => match c.get("ConnectionArn") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                return Err("InvocationConfig.ConnectionArn must be a non-empty string".into());
            }
        },
        Some(_) => return Err("InvocationConfig must be an object".into()),
    };

    let authentication_connection = match p.get("Authentication") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => {
            if let Some(k) = a.keys().find(|k| k.as_str() != "ConnectionArn") {
                return Err(format!(
                    "unknown Authentication field '{k}' (known: ConnectionArn)"
                ));
            }
            match a.get("ConnectionArn") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => {
                    return Err("Authentication.ConnectionArn must be a non-empty string".into());
                }
            }
        }
        Some(_) => return Err("Authentication must be an object".into()),
    };

    let connection = match (authentication_connection, invocation_connection) {
        (Some(a), Some(i)) if a != i => {
            return Err(format!(
                "Authentication.ConnectionArn ('{a}') and InvocationConfig.ConnectionArn ('{i}') \
                 differ: give one of them, or the same connection in both"
            ));
        }
        (a, i) => a.or(i),
    };

    Ok(RequestPlan {
        method,
        url,
        headers,
        body,
        url_encoded,
        connection,
    })
}

fn transform(t: &Map<String, Value>) -> Result<(bool, ArrayFormat), String> {
    if let Some(k) = t
        .keys()
        .find(|k| !["RequestBodyEncoding", "RequestEncodingOptions"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown Transform field '{k}' (known: RequestBodyEncoding, RequestEncodingOptions)"
        ));
    }
    let url_encoded = match t.get("RequestBodyEncoding") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "URL_ENCODED" => true,
        Some(Value::String(s)) if s == "NONE" => false,
        Some(_) => {
            return Err("Transform.RequestBodyEncoding must be \"URL_ENCODED\" or \"NONE\"".into());
        }
    };
    let format = match t.get("RequestEncodingOptions") {
        None | Some(Value::Null) => ArrayFormat::Indices,
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "ArrayFormat") {
                return Err(format!(
                    "unknown Transform.RequestEncodingOptions field '{k}' (known: ArrayFormat)"
                ));
            }
            match o.get("ArrayFormat") {
                None | Some(Value::Null) => ArrayFormat::Indices,
                Some(Value::String(s)) => ArrayFormat::parse(s).ok_or_else(|| {
                    format!(
                        "Transform.RequestEncodingOptions.ArrayFormat must be INDICES, REPEAT, COMMAS or BRACKETS; got '{s}'"
                    )
                })?,
                Some(_) => {
                    return Err(
                        "Transform.RequestEncodingOptions.ArrayFormat must be a string".into(),
                    );
                }
            }
        }
        Some(_) => return Err("Transform.RequestEncodingOptions must be an object".into()),
    };
    Ok((url_encoded, format))
}

/// A scalar as text: strings as they are, numbers and booleans as JSON,
/// `null` as the empty string; `None` for arrays and objects.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// URL-encodes an object as a form body: nested objects as `a[b]=v`, arrays
/// in the chosen format, `null` as an empty value (the `qs` conventions
/// AWS's HTTP Task follows).
pub fn url_encode(fields: &Map<String, Value>, format: ArrayFormat) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in fields {
        flatten(k.clone(), v, format, &mut pairs);
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

fn flatten(key: String, v: &Value, format: ArrayFormat, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                flatten(format!("{key}[{k}]"), child, format, out);
            }
        }
        Value::Array(items) => {
            let all_scalar = items
                .iter()
                .all(|i| !matches!(i, Value::Array(_) | Value::Object(_)));
            match format {
                ArrayFormat::Commas if all_scalar => {
                    let joined: Vec<String> = items.iter().filter_map(scalar_text).collect();
                    out.push((key, joined.join(",")));
                }
                ArrayFormat::Repeat if all_scalar => {
                    for i in items {
                        flatten(key.clone(), i, format, out);
                    }
                }
                ArrayFormat::Brackets if all_scalar => {
                    for i in items {
                        flatten(format!("{key}[]"), i, format, out);
                    }
                }
                // Indices, and nested structures in any format: an index is
                // the only unambiguous way to write them.
                _ => {
                    for (n, i) in items.iter().enumerate() {
                        flatten(format!("{key}[{n}]"), i, format, out);
                    }
                }
            }
        }
        scalar => out.push((key, scalar_text(scalar).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decoded(body: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn array_formats() {
        let body = json!({"a": ["x", "y"], "n": 1, "o": {"p": true, "q": null}});
        let m = body.as_object().unwrap();
        assert_eq!(
            decoded(&url_encode(m, ArrayFormat::Indices)),
            pairs(&[
                ("a[0]", "x"),
                ("a[1]", "y"),
                ("n", "1"),
                ("o[p]", "true"),
                ("o[q]", "")
            ])
        );
        assert_eq!(
            decoded(&url_encode(m, ArrayFormat::Repeat))[..2],
            pairs(&[("a", "x"), ("a", "y")])[..]
        );
        assert_eq!(
            decoded(&url_encode(m, ArrayFormat::Commas))[..1],
            pairs(&[("a", "x,y")])[..]
        );
        assert_eq!(
            decoded(&url_encode(m, ArrayFormat::Brackets))[..2],
            pairs(&[("a[]", "x"), ("a[]", "y")])[..]
        );
        let nested = json!({"a": [{"b": 1}]});
        assert_eq!(
            decoded(&url_encode(
                nested.as_object().unwrap(),
                ArrayFormat::Commas
            )),
            pairs(&[("a[0][b]", "1")])
        );
        assert_eq!(
            url_encode(
                json!({"s": "a b&c"}).as_object().unwrap(),
                ArrayFormat::Indices
            ),
            "s=a+b%26c"
        );
    }

    #[test]
    fn plans_a_full_request() {
        let p = plan(&json!({
            "ApiEndpoint": "https://api.example.com/v1/charges?x=1",
            "Method": "post",
            "Headers": {"X-Trace": "t", "X-Num": 3},
            "QueryParameters": {"q": "a b", "tags": ["t1", "t2"]},
            "RequestBody": {"amount": 10},
            "InvocationConfig": {},
            "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:1:connection/Stripe/u"}
        }))
        .unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(
            p.url.as_str(),
            "https://api.example.com/v1/charges?x=1&q=a+b&tags=t1&tags=t2"
        );
        assert!(p.has_header("x-trace") && p.has_header("X-NUM"));
        assert_eq!(p.body, Body::Json(json!({"amount": 10})));
        assert_eq!(
            p.connection.as_deref(),
            Some("arn:aws:events:us-east-1:1:connection/Stripe/u")
        );
        let f = plan(&json!({
            "ApiEndpoint": "http://h/", "Method": "PUT", "RequestBody": {"a": [1, 2]},
            "Transform": {"RequestBodyEncoding": "URL_ENCODED", "RequestEncodingOptions": {"ArrayFormat": "BRACKETS"}}
        }))
        .unwrap();
        assert_eq!(f.body, Body::Form("a%5B%5D=1&a%5B%5D=2".into()));
    }

    #[test]
    fn rejects_invalid_parameters() {
        let bad = [
            json!(1),
            json!({"Method": "GET"}),
            json!({"ApiEndpoint": 3, "Method": "GET"}),
            json!({"ApiEndpoint": "not a url", "Method": "GET"}),
            json!({"ApiEndpoint": "ftp://h/", "Method": "GET"}),
            json!({"ApiEndpoint": "https://u:p@h/", "Method": "GET"}),
            json!({"ApiEndpoint": "https://h/"}),
            json!({"ApiEndpoint": "https://h/", "Method": "TRACE"}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": {"Host": "x"}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": {"bad name": "x"}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": {"a": "x\ny"}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": {"a": {}}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": []}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "QueryParameters": {"a": {}}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Transform": {"RequestBodyEncoding": "XML"}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Transform": {"RequestEncodingOptions": {"ArrayFormat": "X"}}}),
            json!({"ApiEndpoint": "https://h/", "Method": "POST", "RequestBody": [1], "Transform": {"RequestBodyEncoding": "URL_ENCODED"}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Authentication": {}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Authentication": {"ConnectionArn": "c", "X": 1}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "Unknown": 1}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "InvocationConfig": 1}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "InvocationConfig": {"ConnectionArn": ""}}),
            json!({"ApiEndpoint": "https://h/", "Method": "GET", "InvocationConfig": {"ConnectionArn": 1}}),
        ];
        for p in bad {
            assert!(plan(&p).is_err(), "accepted {p}");
        }
    }

    #[test]
    fn invocation_config_names_the_connection() {
        let base = json!({"ApiEndpoint": "https://h/", "Method": "GET"});
        let with = |extra: Value| {
            let mut p = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            plan(&p)
        };
        let p = with(json!({"InvocationConfig": {"ConnectionArn": "arn:aws:events:us-east-1:1:connection/A/u", "Other": 1}}))
            .unwrap();
        assert_eq!(
            p.connection.as_deref(),
            Some("arn:aws:events:us-east-1:1:connection/A/u")
        );
        let p = with(json!({"InvocationConfig": {"ConnectionArn": "A"},
                            "Authentication": {"ConnectionArn": "A"}}))
        .unwrap();
        assert_eq!(p.connection.as_deref(), Some("A"));
        // Other InvocationConfig fields are ignored.
        let p = with(json!({"InvocationConfig": {"ResourceConfigurationArn": "x"}})).unwrap();
        assert_eq!(p.connection, None);
        let e = with(json!({"InvocationConfig": {"ConnectionArn": "A"},
                            "Authentication": {"ConnectionArn": "B"}}))
        .unwrap_err();
        assert!(
            e.contains("'A'") && e.contains("'B'") && e.contains("differ"),
            "{e}"
        );
    }

    #[test]
    fn refuses_the_headers_aws_refuses() {
        let refused = [
            "A-IM",
            "Accept-Charset",
            "Accept-Datetime",
            "Accept-Encoding",
            "Cache-Control",
            "Connection",
            "Content-Encoding",
            "Content-Length",
            "Content-MD5",
            "Date",
            "Expect",
            "Forwarded",
            "From",
            "Host",
            "HTTP2-Settings",
            "If-Match",
            "If-Modified-Since",
            "If-None-Match",
            "If-Range",
            "If-Unmodified-Since",
            "Keep-Alive",
            "Max-Forwards",
            "Origin",
            "Pragma",
            "Proxy-Authorization",
            "Proxy-Connection",
            "Referer",
            "Server",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Via",
            "Warning",
            "X-Forwarded-For",
            "X-Amz-Date",
            "X-Amzn-Trace-Id",
        ];
        for name in refused {
            let e = plan(&json!({"ApiEndpoint": "https://h/", "Method": "GET",
                                 "Headers": {name: "v"}}))
            .unwrap_err();
            assert!(e.contains(&format!("'{name}'")), "{name}: {e}");
        }
        for name in [
            "Accept",
            "Authorization",
            "Content-Type",
            "X-Request-Id",
            "Range",
        ] {
            plan(&json!({"ApiEndpoint": "https://h/", "Method": "GET", "Headers": {name: "v"}}))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn credentials_need_https_or_loopback() {
        let allowed = [
            "https://api.example.com/",
            "https://10.0.0.1/",
            "http://127.0.0.1:8080/",
            "http://127.9.9.9/",
            "http://127.1/",
            "http://localhost:1/",
            "http://LOCALHOST/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
        ];
        for u in allowed {
            assert!(allows_credentials(&Url::parse(u).unwrap()), "{u}");
        }
        let refused = [
            "http://api.example.com/",
            "http://10.0.0.1/",
            "http://128.0.0.1/",
            "http://127.0.0.1.nip.io/",
            "http://localhost.example.com/",
            "http://[::2]/",
            "http://0.0.0.0/",
            "ftp://127.0.0.1/",
        ];
        for u in refused {
            assert!(!allows_credentials(&Url::parse(u).unwrap()), "{u}");
        }
    }
}
