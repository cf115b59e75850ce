//! A tiny HTTP GET for /healthz, /readyz, /metrics and the refusals.

use std::time::Duration;

/// GETs `url`; `Err` carries the transport failure (refused, reset, timed out) as text.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}
