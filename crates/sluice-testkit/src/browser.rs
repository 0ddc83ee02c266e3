//! A real browser for tests: headless Chromium (Debian's `chromium`) driven over WebDriver by
//! `chromedriver`, so whatever a person's browser would do with what we serve (run a page's
//! script, download an attachment, play a stream) is checked by that browser.
//! `scripts/test.sh` installs both.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a page load or a script may take before the browser gives up.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    http: reqwest::Client,
}

/// Chromium's flags for a closed network, as root, without a display.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

impl Browser {
    /// Starts chromedriver on a free port and opens a session; downloads are refused, so a
    /// file served as an attachment leaves the browser where it was.
    pub async fn start() -> Self {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let stdout = driver.stdout.take().expect("piped");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.split("started successfully on port ")
                    .nth(1)
                    .map(|p| p.trim_end_matches('.').trim().to_owned())
            });
            // Keep draining, so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("read chromedriver")
        .expect("chromedriver says its port");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": CHROMIUM_ARGS,
                "prefs": {"download_restrictions": 3},
            },
            // The page's console and its failed loads, for `console_errors`.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a session");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        let browser = Self {
            driver,
            session: format!("{base}/session/{id}"),
            http,
        };
        let ms = PAGE_TIMEOUT.as_millis() as u64;
        browser
            .command("timeouts", json!({"pageLoad": ms, "script": ms}))
            .await;
        browser
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let request = self
            .http
            .post(format!("{}/{path}", self.session))
            .json(&body);
        Self::value_of(request).await
    }

    /// chromedriver's answer to `request`: its `value`.
    async fn value_of(request: reqwest::RequestBuilder) -> Value {
        let answer: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON from chromedriver");
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load (a download leaves the current page in place).
    pub async fn goto(&self, url: &str) {
        let answer = self.command("url", json!({"url": url})).await;
        assert!(
            answer.is_null() || answer.get("error").is_none(),
            "navigating to {url}: {answer}"
        );
    }

    /// Runs `script` (a function body; `return` what you want) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// The page's address.
    pub async fn location(&self) -> String {
        self.eval("return location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's console messages at level SEVERE since the last call: script errors,
    /// failed loads (a missing favicon included), CSP refusals.
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self.command("se/log", json!({"type": "browser"})).await;
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A PNG of the viewport, saved at `path` (a test's artefact).
    pub async fn screenshot(&self, path: &std::path::Path) {
        let value = Self::value_of(self.http.get(format!("{}/screenshot", self.session))).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Sets the viewport's size (phone width, say).
    pub async fn resize(&self, width: u32, height: u32) {
        self.command("window/rect", json!({"width": width, "height": height}))
            .await;
    }

    /// Types `text` into the element `css` selects (for a file input: the path of a file to
    /// pick, as a person choosing it would).
    pub async fn type_into(&self, css: &str, text: &str) {
        let found = self
            .command("element", json!({"using": "css selector", "value": css}))
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned();
        let answer = self
            .command(&format!("element/{id}/value"), json!({"text": text}))
            .await;
        assert!(answer.is_null(), "typing into {css}: {answer}");
    }

    /// Ends the session (closing Chromium) and chromedriver.
    pub async fn quit(self) {
        // Drop does it, with a blocking request: keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

impl Drop for Browser {
    /// A test that failed before `quit` still closes Chromium: the session is ended with a
    /// plain blocking request, then chromedriver goes.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some((host, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
        else {
            return;
        };
        if let Ok(mut s) = std::net::TcpStream::connect(host) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            // The answer comes once Chromium has closed.
            let _ = s.read(&mut [0u8; 512]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
