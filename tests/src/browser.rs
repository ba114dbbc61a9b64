//! A real browser for page tests: headless Chromium driven through Debian's `chromedriver` over
//! the W3C WebDriver protocol (JSON over HTTP, spoken here with the reqwest client the harness
//! already uses). The driver runs on a free loopback port; on drop the session is ended (which
//! stops Chromium) and the driver killed, whether the test passed or not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::ports::free_loopback_addr;
use crate::process::{POLL_INTERVAL, Process, ProcessSpec, wait_until_ready};
use crate::tools::require;

/// Chromium's first start (profile, fonts) on a busy 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// One browser window, headless.
pub struct Browser {
    http: reqwest::Client,
    driver: SocketAddr,
    /// `/session/ID`.
    id: String,
    // Declared last: the driver goes after the session is closed.
    _driver: Process,
}

impl Browser {
    /// Starts `chromedriver` (logging into `log_dir`) and a headless Chromium session.
    pub async fn start(log_dir: &Path) -> Result<Browser> {
        let driver = require("chromedriver");
        let chromium = require("chromium");
        let addr = free_loopback_addr()?;
        let mut process = Process::spawn(ProcessSpec {
            name: "chromedriver".into(),
            program: driver,
            args: vec![format!("--port={}", addr.port())],
            env: Vec::new(),
            log: log_dir.join("chromedriver.log"),
        })?;
        let base = format!("http://{addr}");
        wait_until_ready(&mut process, &format!("{base}/status"), START_DEADLINE).await?;
        let http = reqwest::Client::builder()
            .timeout(START_DEADLINE)
            .build()
            .context("building the WebDriver client")?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // Tests run as root in CI: Chromium's sandbox refuses root.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,900"],
            },
        }}});
        let created = command(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await
        .context("starting a Chromium session")?;
        let id = created["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?;
        Ok(Browser {
            http,
            driver: addr,
            id: id.to_owned(),
            _driver: process,
        })
    }

    /// Opens `url` and waits for its load event.
    pub async fn open(&self, url: &str) -> Result<()> {
        self.post("url", json!({ "url": url })).await.map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Polls `script` until `done` accepts its value, failing after `deadline` with the last one.
    pub async fn wait_for(
        &self,
        script: &str,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        loop {
            let value = self.eval(script).await?;
            if done(&value) {
                return Ok(value);
            }
            if start.elapsed() > deadline {
                bail!("the page did not get there within {deadline:?}; last seen: {value}");
            }
            tokio::time::sleep(POLL_INTERVAL * 4).await;
        }
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let value = command(
            &self.http,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.session()),
            None,
        )
        .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().context("screenshot is no string")?)
            .context("decoding the screenshot")?;
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is no PNG");
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    fn session(&self) -> String {
        format!("http://{}/session/{}", self.driver, self.id)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        command(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/{path}", self.session()),
            Some(body),
        )
        .await
    }
}

impl Drop for Browser {
    /// Ends the session, so the driver stops Chromium before it is killed itself (a killed
    /// driver leaves its browser running). Blocking: drop cannot await.
    fn drop(&mut self) {
        let ended = TcpStream::connect_timeout(&self.driver, START_DEADLINE).and_then(|mut tcp| {
            tcp.set_read_timeout(Some(START_DEADLINE))?;
            write!(
                tcp,
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.id, self.driver
            )?;
            tcp.read_to_end(&mut Vec::new())
        });
        if let Err(e) = ended {
            eprintln!("ending the Chromium session: {e}");
        }
    }
}

/// One WebDriver command: its `value`, or the driver's error.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("WebDriver {method} {url}"))?;
    let status = response.status();
    let mut answer: Value = response
        .json()
        .await
        .with_context(|| format!("WebDriver {method} {url}: reading the answer"))?;
    ensure!(
        status.is_success(),
        "WebDriver {method} {url} answered {status}: {answer}"
    );
    Ok(answer["value"].take())
}
