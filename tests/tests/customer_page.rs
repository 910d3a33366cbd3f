//! The customer page in a real browser: headless Chromium (Debian's, through chromedriver)
//! against a node on Anvil with streams of two payers. The page shows the linked payer's streams
//! only; its ticking balance is `stream_balanceAt` at the second it shows; Verify checks the
//! record's proof in the browser and the root on chain; it fits a phone's width, names its
//! controls, and loads nothing from elsewhere. Links: expired and forged ones are refused.

use std::{process::Child, time::Duration};

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ext::AnvilApi},
};
use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};
use settled_tests::{
    OPERATOR_ACCOUNT, TestNode, TestResult,
    rpc::{call_with_key, vendor_key},
};

const TOKEN: &str = "vendor-token";

/// chromedriver on a free loopback port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn driver() -> TestResult<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("chromedriver: {e} (scripts/test.sh installs it: apt chromium-driver)")
        })?;
    let driver = Driver(child, port);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("chromedriver did not listen".into())
}

async fn billing(node: &TestNode, method: &str, params: Value) -> TestResult<Value> {
    let answer = call_with_key(&node.node()?.rpc_url(), TOKEN, method, params).await?;
    answer.map_err(|e| format!("{method}: {e:?}").into())
}

/// A node operating two payers' streams (two of payer A, one of payer B), one period settled.
async fn node_with_two_payers() -> TestResult<(TestNode, Address, Vec<u64>, u64)> {
    let node = TestNode::spawn_operator(|config| config.billing.api_keys = vec![vendor_key(TOKEN)])
        .await?;
    let chain = node.chain();
    let (a, b, payee) = (chain.account(3)?, chain.account(6)?, chain.account(4)?);
    let operator = chain.account(OPERATOR_ACCOUNT)?;
    let mut ids = Vec::new();
    for payer in [a, b] {
        chain.fund_payer(payer, U256::from(10u128.pow(12))).await?;
    }
    // 0.01 and 0.002 USDC a second for A, 0.005 for B; 100 USDC deposits.
    for (payer, rate) in [(a, 10u128.pow(16)), (a, 2 * 10u128.pow(15)), (b, 5 * 10u128.pow(15))] {
        let id = chain.open_stream(payer, payee, operator, rate, 100_000_000).await?;
        ids.push(id.to::<u64>());
    }
    chain.provider().anvil_increase_time(600).await?;
    chain.provider().anvil_mine(Some(1), None).await?;
    let head = chain.provider().get_block_number().await?;
    node.wait_for_head(head, Duration::from_secs(10)).await?;
    let round = node.node()?.settler().ok_or("no settlement")?.settle().await?;
    assert!(!round.committed.is_empty(), "{round:?}");
    let b_stream = ids.pop().ok_or("no stream")?;
    Ok((node, a, ids, b_stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_checks_and_verifies_its_own_bill() -> TestResult {
    let (node, payer, streams, other) = node_with_two_payers().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let link = billing(
        &node,
        "billing_customerLink",
        json!([{ "payer": payer, "expiresAt": now + 3600 }]),
    )
    .await?;
    let url = link["url"].as_str().ok_or("no url")?.to_string();

    let driver = driver().await?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=390,844"] }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await?;
    let result = check_page(&browser, &node, &url, &streams, other).await;
    let result = match result {
        Ok(()) => resyncs_on_notices(&browser, &node, payer, streams[0]).await,
        failed => failed,
    };
    browser.close().await?;
    result
}

async fn check_page(
    browser: &fantoccini::Client,
    node: &TestNode,
    url: &str,
    streams: &[u64],
    other: u64,
) -> TestResult {
    browser.goto(url).await?;
    let first = format!("#balance-{}", streams[0]);
    browser.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(&first)).await?;
    // The payer's streams, not the other payer's.
    let shown: Vec<String> = serde_json::from_value(
        browser
            .execute(
                "return [...document.querySelectorAll('section.stream')].map(s => s.id)",
                vec![],
            )
            .await?,
    )?;
    let expected: Vec<String> = streams.iter().map(|id| format!("stream-{id}")).collect();
    assert_eq!(shown, expected, "only the linked payer's streams (not stream {other})");

    // The ticking balance is the node's own figure at the second it shows.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        for id in streams {
            let shown = browser
                .execute(&format!("const b = document.getElementById('balance-{id}'); return [b.dataset.at, b.dataset.baseUnits, b.textContent]"), vec![])
                .await?;
            let at: u64 = shown[0].as_str().ok_or("no data-at")?.parse()?;
            let view = billing(node, "stream_balanceAt", json!([id.to_string(), at])).await?;
            assert_eq!(shown[1], view["refundable"], "stream {id} at {at}: {shown} vs {view}");
        }
    }

    // Verify: the proof in the browser (its own keccak), the root and verify() on chain.
    let keccak = browser.execute("return keccakHex(new Uint8Array())", vec![]).await?;
    assert_eq!(keccak, json!("0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"));
    let label = format!("Verify batch 1 for stream {}", streams[0]);
    browser.find(Locator::Css(&format!("button[aria-label='{label}']"))).await?.click().await?;
    let verdict = format!("#verdict-{}-1", streams[0]);
    let mut text = String::new();
    for _ in 0..50 {
        text = browser.find(Locator::Css(&verdict)).await?.text().await?;
        if text.starts_with("Verified") || text.starts_with("Not verified") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text.starts_with("Verified:"), "{text}");
    // A picture of the page as the phone saw it, for a person to look at (not committed).
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("customer-page.png");
    std::fs::write(&shot, browser.screenshot().await?)?;
    eprintln!("screenshot: {}", shot.display());

    // A tampered receipt fails: an altered record, then a self-consistent fake the chain lacks.
    let tampered = browser
        .execute_async(
            &format!(
                "const done = arguments[arguments.length - 1]; (async () => {{ \
                 const r = await (await fetch(location.pathname + '/receipt?stream={id}&batch=1')).json(); \
                 const bytes = r.encoded.split(''); bytes[300] = bytes[300] === 'f' ? 'e' : 'f'; r.encoded = bytes.join(''); \
                 const altered = await verifyReceipt(r); \
                 r.leaf = keccakHex(unhex(keccakHex(unhex(r.encoded)))); r.proof = []; r.root = r.leaf; \
                 return [altered, await verifyReceipt(r)]; }})().then(done);",
                id = streams[0]
            ),
            vec![],
        )
        .await?;
    let (altered, fake) = (tampered[0].as_str().unwrap_or(""), tampered[1].as_str().unwrap_or(""));
    assert!(altered.starts_with("Not verified: the record does not hash"), "{altered}");
    assert!(fake.starts_with("Not verified: the anchor holds another root"), "{fake}");

    // A phone's width, named controls, the chart drawn, nothing from elsewhere.
    let layout = browser
        .execute(
            "return { overflow: document.documentElement.scrollWidth - window.innerWidth, \
             unnamed: [...document.querySelectorAll('button')].filter(b => !(b.getAttribute('aria-label') || b.textContent.trim())).length, \
             noAlt: [...document.querySelectorAll('img')].filter(i => !i.alt).length, \
             charts: [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length, \
             low: [...document.querySelectorAll('.low')].filter(e => e.offsetParent !== null).length, \
             foreign: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin)) }",
            vec![],
        )
        .await?;
    // innerWidth counts a scrollbar; scrollWidth does not: ≤ 0 means no sideways scrolling.
    assert!(layout["overflow"].as_i64().is_some_and(|o| o <= 0), "wider than a phone: {layout}");
    assert_eq!(
        (layout["unnamed"].clone(), layout["noAlt"].clone()),
        (json!(0), json!(0)),
        "{layout}"
    );
    assert_eq!(layout["charts"], json!(streams.len()), "{layout}");
    assert_eq!(layout["low"], json!(0), "hours of balance left are not low: {layout}");
    assert_eq!(layout["foreign"], json!([]), "{layout}");
    Ok(())
}

/// A top-up reaches the open page over its WebSocket: the ticking balance follows the chain.
async fn resyncs_on_notices(
    browser: &fantoccini::Client,
    node: &TestNode,
    payer: Address,
    id: u64,
) -> TestResult {
    let vault = settled_contracts::StreamVault::new(
        node.chain().deployment().stream_vault,
        node.chain().provider(),
    );
    let deposit = vault.deposit(U256::from(id), 5_000_000).from(payer);
    deposit.send().await?.get_receipt().await?;
    for _ in 0..100 {
        let seen = browser.execute("return window.notices", vec![]).await?;
        if seen.as_u64().unwrap_or(0) > 0 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let shown = browser
                .execute(&format!("const b = document.getElementById('balance-{id}'); return [b.dataset.at, b.dataset.baseUnits]"), vec![])
                .await?;
            let at: u64 = shown[0].as_str().ok_or("no data-at")?.parse()?;
            let view = billing(node, "stream_balanceAt", json!([id.to_string(), at])).await?;
            assert_eq!(shown[1], view["refundable"], "after the top-up, at {at}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no notice reached the page".into())
}

/// Links: a forged or altered token is refused (403), an expired one says so (410); the page's
/// data never shows another payer's stream; the relay refuses anything but the anchor's reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_signed_scoped_and_expire() -> TestResult {
    let (node, payer, streams, other) = node_with_two_payers().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let link =
        billing(&node, "billing_customerLink", json!([{ "payer": payer, "expiresAt": now + 60 }]))
            .await?;
    let url = link["url"].as_str().ok_or("no url")?;
    let http = alloy::transports::http::reqwest::Client::new();
    let data: Value = http.get(format!("{url}/data")).send().await?.json().await?;
    let ids: Vec<&str> = data["streams"]
        .as_array()
        .ok_or("no streams")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        streams
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let own = http.get(format!("{url}/chart.svg?stream={}&range=week", streams[0])).send().await?;
    let svg = own.text().await?;
    assert!(svg.contains("<polyline") && svg.contains("points="), "the chart has its points");
    let chart = http.get(format!("{url}/chart.svg?stream={other}")).send().await?;
    assert_eq!(chart.status().as_u16(), 404, "another payer's chart");
    let forged = url.replacen("/customer/01", "/customer/02", 1);
    assert_eq!(http.get(&forged).send().await?.status().as_u16(), 403);
    let relay = http
        .post(format!("{url}/chain"))
        .json(&json!({ "method": "eth_call", "params": [{ "to": payer, "data": "0x" }] }))
        .send()
        .await?;
    assert_eq!(relay.status().as_u16(), 403, "only the anchor's reads are relayed");
    let refused =
        billing(&node, "billing_customerLink", json!([{ "payer": payer, "expiresAt": now - 1 }]))
            .await;
    assert!(refused.is_err(), "a link that expired before it was issued");
    // An expired link (issued for one second, then waited out).
    let short =
        billing(&node, "billing_customerLink", json!([{ "payer": payer, "expiresAt": now + 1 }]))
            .await?;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let expired = http.get(short["url"].as_str().ok_or("no url")?).send().await?;
    assert_eq!(expired.status().as_u16(), 410);
    let page = expired.text().await?;
    assert!(page.contains("<h1>") && page.contains("expired"), "a page for a person: {page}");
    Ok(())
}
