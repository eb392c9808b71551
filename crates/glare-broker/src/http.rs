//! The HTTP endpoints of PROTOCOL.md §1.1–§1.7.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use futures_util::stream;
use glare_proto::{
    broker::{
        self, ChannelAuth, CreateSession, ErrorBody, ErrorCode, Send, SessionCreated,
        UpdateSession, compact_raw, parse_request,
    },
    filter::Filter,
    sse::{encode_comment, encode_event},
};
use http_body_util::{BodyExt as _, Limited};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::{mpsc, watch};

use crate::{
    App,
    registry::{ApiError, Attachment, Delivery, DetachGuard, Origin, Resume, WatchEvent},
};

type AppState = State<Arc<App>>;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/channel", getter(get(open_channel)))
        .route("/channel/close", poster(post(close_channel)))
        .route("/session", poster(post(create_session)))
        .route("/session/{sid}/update", poster(post(update_session)))
        .route("/session/{sid}/close", poster(post(close_session)))
        .route("/send/{target}", poster(post(send)))
        .route("/list", getter(get(list)))
        .route("/healthz", getter(get(healthz)))
        .route("/metrics", getter(get(metrics)))
        .route("/ws", getter(get(crate::ws::upgrade)))
        .route("/", getter(get(index_html)))
        .route("/glare.js", getter(get(glare_js)))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), cors))
        .with_state(app)
}

fn getter(r: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
    r.fallback(|State(app): AppState| async move { not_allowed(&app, "GET, OPTIONS") })
}

fn poster(r: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
    r.fallback(|State(app): AppState| async move { not_allowed(&app, "POST, OPTIONS") })
}

fn not_allowed(app: &App, allow: &'static str) -> Response {
    let mut res = error(
        app,
        ErrorBody::new(
            ErrorCode::MethodNotAllowed,
            format!("this path answers {allow}"),
        )
        .into(),
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

async fn not_found(State(app): AppState, req: Request) -> Response {
    let path: String = req.uri().path().chars().take(100).collect();
    error(
        &app,
        ErrorBody::not_found(format!("no such path: {path}")).into(),
    )
}

async fn cors(State(app): AppState, req: Request, next: Next) -> Response {
    let origin = HeaderValue::from_str(&app.config.cors_origin)
        .unwrap_or_else(|_| HeaderValue::from_static("*"));
    let mut res = if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type, Last-Event-ID"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        res
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    res
}

/// An error response; counts it in `glare_http_errors_total`.
pub(crate) fn error(app: &App, err: ApiError) -> Response {
    app.metrics.api_error(&err);
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::to_string(&err.body).unwrap_or_default();
    let mut res = (status, json_headers(), body).into_response();
    if let Some(wait) = err.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    res
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )]
}

fn json(status: StatusCode, body: String) -> Response {
    (status, json_headers(), body).into_response()
}

fn empty_ok() -> Response {
    json(StatusCode::OK, "{}".to_owned())
}

/// Reads a whole body within the size and time limits: the size is checked against
/// `Content-Length` first and enforced while reading, so nothing over the limit is
/// buffered whole.
async fn read_body(app: &App, req: Request) -> Result<Bytes, ApiError> {
    let max = app.config.limits.max_body;
    let too_large = || {
        ApiError::from(ErrorBody::too_large(format!(
            "the request body is over the {max}-byte limit"
        )))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(app.config.body_timeout, body.collect()).await {
        Err(_) => Err(ErrorBody::bad_request(format!(
            "the request body did not arrive within {} s",
            app.config.body_timeout.as_secs_f64()
        ))
        .into()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ErrorBody::bad_request(format!("could not read the body: {e}")).into()),
    }
}

async fn body_json<T: DeserializeOwned>(app: &App, req: Request) -> Result<T, ApiError> {
    let body = read_body(app, req).await?;
    parse_request(&body).map_err(ApiError::from)
}

/// Turns a handler result into a response, closing the connection after a body that
/// was not read whole.
fn respond(app: &App, res: Result<Response, ApiError>) -> Response {
    match res {
        Ok(r) => r,
        Err(e) => {
            let unread = matches!(e.body.error, ErrorCode::TooLarge)
                || e.body.message.contains("did not arrive");
            let mut res = error(app, e);
            if unread {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }
    }
}

fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ErrorBody::bad_request(format!("bad path: {e}")).into())
}

// ---------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct ChannelQuery {
    cid: Option<String>,
    key: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// Works out a resume from the query and the `Last-Event-ID` header (which wins).
pub(crate) fn resume_from(
    query: ChannelQuery,
    headers: &HeaderMap,
) -> Result<Option<Resume>, ApiError> {
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ErrorBody::bad_request("Last-Event-ID is not ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let resume = broker::parse_resume(
        query.cid,
        query.key,
        header_id.or(query.last_event_id).as_deref(),
    )?;
    Ok(resume.map(|(auth, last_event_id)| Resume {
        auth,
        last_event_id,
    }))
}

/// Parses a request's query string into `T` (400 naming the problem).
pub(crate) fn query<T: DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(t)| t)
        .map_err(|e| ErrorBody::bad_request(format!("bad query: {}", e.body_text())).into())
}

async fn open_channel(State(app): AppState, req: Request) -> Response {
    let resume = query::<ChannelQuery>(req.uri()).and_then(|q| resume_from(q, req.headers()));
    drop(req);
    let res = async {
        let att = app.open(resume?).await?;
        Ok(sse_channel(&app, att))
    }
    .await;
    respond(&app, res)
}

fn sse_response(body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Most bytes put in one chunk when messages queue up.
const BATCH: usize = 64 * 1024;

struct SseState<T> {
    first: Option<String>,
    rx: mpsc::Receiver<T>,
    shutdown: watch::Receiver<bool>,
    ticker: tokio::time::Interval,
    encode: fn(&mut String, T),
    _guard: DetachGuard,
}

fn keep_alive_ticker(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(10));
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

fn sse_stream<T: std::marker::Send + 'static>(state: SseState<T>) -> Body {
    let s = stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(first)), st));
        }
        let chunk = tokio::select! {
            biased;
            () = crate::stopped(&mut st.shutdown) => None,
            item = st.rx.recv() => match item {
                Some(item) => {
                    let mut out = String::new();
                    (st.encode)(&mut out, item);
                    while out.len() < BATCH {
                        match st.rx.try_recv() {
                            Ok(item) => (st.encode)(&mut out, item),
                            Err(_) => break,
                        }
                    }
                    st.ticker.reset();
                    Some(out)
                }
                None => None,
            },
            _ = st.ticker.tick() => {
                let mut out = String::new();
                encode_comment(&mut out, "keep-alive");
                Some(out)
            }
        };
        chunk.map(|c| (Ok(Bytes::from(c)), st))
    });
    Body::from_stream(s)
}

fn encode_delivery(out: &mut String, d: Delivery) {
    encode_event(out, "message", Some(d.id), &d.data);
}

fn sse_channel(app: &App, att: Attachment) -> Response {
    let Attachment {
        auth,
        gap,
        replay,
        rx,
        end: _,
        guard,
    } = att;
    let mut first = String::new();
    // Ids are alphanumeric: the JSON needs no escaping.
    let channel = format!(r#"{{"cid":"{}","key":"{}"}}"#, auth.cid, auth.key);
    encode_event(&mut first, "channel", None, &channel);
    if let Some(g) = gap {
        let data = format!(r#"{{"from":{},"to":{}}}"#, g.from, g.to);
        encode_event(&mut first, "gap", None, &data);
    }
    for d in replay {
        encode_delivery(&mut first, d);
    }
    sse_response(sse_stream(SseState {
        first: Some(first),
        rx,
        shutdown: app.shutdown.clone(),
        ticker: keep_alive_ticker(app.config.limits.keep_alive),
        encode: encode_delivery,
        _guard: guard,
    }))
}

async fn close_channel(State(app): AppState, req: Request) -> Response {
    let res = async {
        let auth: ChannelAuth = body_json(&app, req).await?;
        app.close_channel(&auth).await?;
        Ok(empty_ok())
    }
    .await;
    respond(&app, res)
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

async fn create_session(State(app): AppState, req: Request) -> Response {
    let res = async {
        let body: CreateSession = body_json(&app, req).await?;
        body.validate(&app.config.limits)?;
        let mut body = body;
        body.metadata = compact_raw(body.metadata);
        let sid = app.create_session(body).await?;
        let out = serde_json::to_string(&SessionCreated { sid }).unwrap_or_default();
        Ok(json(StatusCode::CREATED, out))
    }
    .await;
    respond(&app, res)
}

async fn update_session(
    State(app): AppState,
    sid: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let res = async {
        let sid = path_param(sid)?;
        let mut body: UpdateSession = body_json(&app, req).await?;
        body.validate(&app.config.limits)?;
        body.values.metadata = body.values.metadata.map(compact_raw);
        app.update_session(&sid, body).await?;
        Ok(empty_ok())
    }
    .await;
    respond(&app, res)
}

async fn close_session(
    State(app): AppState,
    sid: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let res = async {
        let sid = path_param(sid)?;
        let auth: ChannelAuth = body_json(&app, req).await?;
        app.close_session(&sid, &auth).await?;
        Ok(empty_ok())
    }
    .await;
    respond(&app, res)
}

// ---------------------------------------------------------------------------------------
// Send
// ---------------------------------------------------------------------------------------

async fn send(
    State(app): AppState,
    target: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let res = async {
        let target = path_param(target)?;
        let body: Send = body_json(&app, req).await?;
        body.validate(&app.config.limits)?;
        let message = compact_raw(body.message);
        app.send(
            &target,
            Origin::Keyed {
                origin: &body.origin,
                key: &body.key,
            },
            message.get(),
        )
        .await?;
        app.metrics.relayed(message.get().len());
        Ok(empty_ok())
    }
    .await;
    respond(&app, res)
}

// ---------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ListQuery {
    filter: Option<String>,
}

async fn list(State(app): AppState, req: Request) -> Response {
    let parsed = query::<ListQuery>(req.uri()).and_then(|q| {
        Filter::parse(q.filter.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::from(ErrorBody::bad_request(format!("bad filter: {e}"))))
    });
    let wants_stream = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    drop(req);
    let res = async {
        let filter = parsed?;
        if !wants_stream {
            let entries = app.list(&filter).await?;
            let mut out = String::from("[");
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(e);
            }
            out.push(']');
            return Ok(json(StatusCode::OK, out));
        }
        let watch = app.watch(filter).await?;
        let mut first = String::new();
        for e in &watch.initial {
            encode_event(&mut first, "add", None, e);
        }
        if first.is_empty() {
            // Something to flush the headers with.
            encode_comment(&mut first, "watching");
        }
        fn encode_watch(out: &mut String, e: WatchEvent) {
            match e {
                WatchEvent::Add(d) => encode_event(out, "add", None, &d),
                WatchEvent::Remove(d) => encode_event(out, "remove", None, &d),
            }
        }
        Ok(sse_response(sse_stream(SseState {
            first: Some(first),
            rx: watch.rx,
            shutdown: app.shutdown.clone(),
            ticker: keep_alive_ticker(app.config.limits.keep_alive),
            encode: encode_watch,
            _guard: watch.guard,
        })))
    }
    .await;
    respond(&app, res)
}

// ---------------------------------------------------------------------------------------
// The browser side (issue 8): glare.js and the demo page, embedded in the binary
// ---------------------------------------------------------------------------------------

/// The browser side of PROTOCOL.md as a plain ES module (assets/glare.js).
const GLARE_JS: &str = include_str!("../assets/glare.js");
/// The demo page on glare.js (assets/index.html).
const INDEX_HTML: &str = include_str!("../assets/index.html");

async fn glare_js() -> Response {
    asset("text/javascript; charset=utf-8", GLARE_JS)
}

async fn index_html() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

async fn healthz(State(app): AppState) -> Response {
    if app.redis.as_ref().is_some_and(|r| !r.ready()) {
        return error(
            &app,
            ApiError::unavailable("this node is not subscribed to its Redis inbox"),
        );
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        "ok",
    )
        .into_response()
}

async fn metrics(State(app): AppState) -> Response {
    let text = app.metrics.render(app.stats());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}
