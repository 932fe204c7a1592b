//! The Prometheus HTTP API: instant queries and firing alerts, with a timeout per call and
//! bounded retries. A source that fails gives an error, which analysis turns into
//! "inconclusive", never into a pass.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Tries per call: the first and two retries.
const ATTEMPTS: u32 = 3;

/// A client for one Prometheus server.
#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct AlertsData {
    alerts: Vec<Alert>,
}

/// An alert as Prometheus reports it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Alert {
    /// Its labels (`alertname`, `service`, `pool`...).
    pub labels: BTreeMap<String, String>,
    /// Its annotations (`summary`, `runbook_url`...).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `firing` or `pending`.
    pub state: String,
}

impl Prometheus {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:9090`).
    pub fn new(base: &str, timeout: Duration) -> Self {
        crate::tls::install_ring_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("building an HTTP client");
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, String> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let resp = match self.http.get(&url).query(query).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("Prometheus at {} unreachable: {e}", self.base);
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                last = format!("Prometheus answered HTTP {status}");
                continue;
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading Prometheus' answer: {e}"))?;
            let env: Envelope<T> = serde_json::from_slice(&body).map_err(|e| {
                format!("Prometheus answered HTTP {status} with something that is not its API: {e}")
            })?;
            if env.status != "success" {
                return Err(format!(
                    "Prometheus refused the query: {}",
                    env.error.unwrap_or_default()
                ));
            }
            return env
                .data
                .ok_or_else(|| "Prometheus answered without data".to_string());
        }
        Err(last)
    }

    /// Runs an instant query that should give one number; `None` when it gives no series.
    pub async fn query(&self, promql: &str) -> Result<Option<f64>, String> {
        let data: QueryData = self.get("/api/v1/query", &[("query", promql)]).await?;
        let sample = match data.result_type.as_str() {
            "scalar" => Some(&data.result),
            "vector" => match data.result.as_array().map(Vec::as_slice) {
                Some([]) | None => None,
                Some([one]) => one.get("value"),
                Some(many) => {
                    return Err(format!(
                        "the query returned {} series; aggregate it to one (e.g. sum(...))",
                        many.len()
                    ));
                }
            },
            other => return Err(format!("the query returned a {other}, not a number")),
        };
        let Some(pair) = sample else { return Ok(None) };
        let text = pair
            .get(1)
            .and_then(|v| v.as_str())
            .ok_or("malformed sample in Prometheus' answer")?;
        let value = match text {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            t => t.parse().map_err(|_| format!("{t:?} is not a number"))?,
        };
        Ok(Some(value))
    }

    /// Runs an instant query that gives a vector: each series' labels and value.
    pub async fn query_vector(
        &self,
        promql: &str,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let data: QueryData = self.get("/api/v1/query", &[("query", promql)]).await?;
        if data.result_type != "vector" {
            return Err(format!(
                "the query returned a {}, not a vector",
                data.result_type
            ));
        }
        #[derive(Deserialize)]
        struct Series {
            metric: BTreeMap<String, String>,
            value: (f64, String),
        }
        let series: Vec<Series> = serde_json::from_value(data.result)
            .map_err(|e| format!("malformed vector in Prometheus' answer: {e}"))?;
        Ok(series
            .into_iter()
            .map(|s| (s.metric, s.value.1.parse().unwrap_or(f64::NAN)))
            .collect())
    }

    /// Every alert Prometheus currently has (pending and firing).
    pub async fn alerts(&self) -> Result<Vec<Alert>, String> {
        let data: AlertsData = self.get("/api/v1/alerts", &[]).await?;
        Ok(data.alerts)
    }
}
