//! Test helpers: a simulated network with the API served for each node.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use peercomm_api::{router, serve, ApiConfig};
use peercomm_node::NodeHandle;
use peercomm_sim::{SimNet, SimOptions, Topology};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// The token every test API uses.
pub const TOKEN: &str = "test-token-0123456789";

/// The body limit of the test APIs (small, so 413 is cheap to provoke).
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// How long any single wait may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// One node's API, served on 127.0.0.1; stopped on drop.
pub struct Api {
    pub base: String,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Api {
    /// Serves the API of `node` on an ephemeral port.
    pub async fn start(node: NodeHandle) -> Result<Self> {
        let config = ApiConfig {
            token: TOKEN.to_owned(),
            max_body_bytes: MAX_BODY_BYTES,
        };
        let app = router(node, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = serve(listener, app, async move {
                let _ = stopped.await;
            })
            .await;
        });
        let client = Client::builder().timeout(DEADLINE).build()?;
        Ok(Self {
            base,
            client,
            stop: Some(stop),
        })
    }

    /// A request with the token.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// A request without any token.
    pub fn req_anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// GET with the token, expecting `status`; returns the JSON body.
    pub async fn get_json(&self, path: &str, status: StatusCode) -> Result<Value> {
        expect_json(self.req(Method::GET, path).send().await?, status).await
    }

    /// POST JSON with the token, expecting `status`; returns the JSON body.
    pub async fn post_json(&self, path: &str, body: &Value, status: StatusCode) -> Result<Value> {
        expect_json(
            self.req(Method::POST, path).json(body).send().await?,
            status,
        )
        .await
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Checks the status and parses the JSON body, with the body in the error.
pub async fn expect_json(response: Response, status: StatusCode) -> Result<Value> {
    let got = response.status();
    let url = response.url().clone();
    let text = response.text().await?;
    if got != status {
        bail!("{url}: expected {status}, got {got}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url}: not JSON: {text}"))
}

/// Checks an error answer: status, JSON shape and code; returns the message.
pub async fn expect_error(response: Response, status: StatusCode, code: &str) -> Result<String> {
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = expect_json(response, status).await?;
    if !is_json {
        bail!("error answer is not application/json: {body}");
    }
    let got = body["error"]["code"].as_str().unwrap_or_default();
    if got != code {
        bail!("expected error code {code}, got {body}");
    }
    let message = body["error"]["message"]
        .as_str()
        .context("error without message")?;
    if message.is_empty() {
        bail!("empty error message: {body}");
    }
    Ok(message.to_owned())
}

/// A two-node full mesh with an API on each node.
pub async fn two_nodes() -> Result<(SimNet, Api, Api)> {
    let net = SimNet::start(SimOptions::new(2, Topology::FullMesh)).await?;
    let a = Api::start(net.handle(0).clone()).await?;
    let b = Api::start(net.handle(1).clone()).await?;
    Ok((net, a, b))
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A parsed `text/event-stream`.
pub struct SseStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl SseStream {
    /// Opens `/v1/events`, optionally resuming after `last_event_id`.
    pub async fn open(api: &Api, last_event_id: Option<&str>) -> Result<Self> {
        // No overall timeout: the stream is endless; reads are bounded below.
        let client = Client::new();
        let mut request = client
            .get(format!("{}/v1/events", api.base))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(DEADLINE, request.send())
            .await
            .context("opening /v1/events timed out")??;
        if response.status() != StatusCode::OK {
            bail!("/v1/events answered {}", response.status());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_type.starts_with("text/event-stream") {
            bail!("/v1/events content type {content_type}");
        }
        Ok(Self {
            body: response
                .bytes_stream()
                .map(|chunk| chunk.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        })
    }

    /// The next event (comments skipped), or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if event.event.is_none() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                event.data = data.join("\n");
                return Ok(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .context("timed out waiting for a server-sent event")?
                .context("event stream ended")??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one satisfies `pred`; returns every event read.
    pub async fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .with_context(|| format!("events so far: {seen:?}"))?;
            let done = pred(&event);
            seen.push(event);
            if done {
                return Ok(seen);
            }
        }
    }
}
