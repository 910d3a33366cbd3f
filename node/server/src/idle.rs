//! Unauthenticated WebSockets are closed once idle (#20 item 4): the socket is wrapped so the
//! node knows when its peer last sent anything, and a watchdog ends the connection (the next
//! read sees end-of-file) when a WebSocket opened without a billing key stays silent too long.
//! A key-holder's subscription (`stream_subscribe`) may stay quiet for hours; an anonymous
//! connection has nothing to wait for.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the watchdog and the socket share.
#[derive(Debug)]
pub(crate) struct Activity {
    last_read: Mutex<Instant>,
    closed: AtomicBool,
    reader: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            last_read: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            reader: Mutex::new(None),
        })
    }

    fn idle_for(&self) -> Duration {
        self.last_read.lock().map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Ends the connection: the pending read wakes and sees end-of-file.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(waker) = self.reader.lock().ok().and_then(|mut w| w.take()) {
            waker.wake();
        }
    }

    /// Closes the connection once it has been silent for `limit`; ends when the connection does.
    pub(crate) fn watch(self: Arc<Self>, limit: Duration) {
        tokio::spawn(async move {
            let check = (limit / 4).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(check).await;
                // Only this watchdog holds it: the connection is gone.
                if Arc::strong_count(&self) == 1 {
                    return;
                }
                if self.idle_for() >= limit {
                    tracing::debug!(?limit, "closing an idle unauthenticated WebSocket");
                    self.close();
                    return;
                }
            }
        });
    }
}

/// A connection's socket that records when its peer last sent bytes.
pub(crate) struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> WatchedIo<T> {
    /// Wraps `inner`; the activity handle lets a watchdog close it.
    pub(crate) fn new(inner: T) -> (Self, Arc<Activity>) {
        let activity = Activity::new();
        (Self { inner, activity: activity.clone() }, activity)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.activity.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(())); // end-of-file
        }
        if let Ok(mut reader) = self.activity.reader.lock() {
            *reader = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Ok(mut last) = self.activity.last_read.lock()
        {
            *last = Instant::now();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A silent peer's connection ends after the limit; one that keeps talking does not.
    #[tokio::test]
    async fn a_silent_connection_is_closed_a_talking_one_is_not() -> io::Result<()> {
        let (client, server) = tokio::io::duplex(64);
        let (mut watched, activity) = WatchedIo::new(server);
        activity.watch(Duration::from_millis(400));
        let (_client_read, mut client_write) = tokio::io::split(client);
        let talker = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = client_write.write_all(b"x").await;
            }
            client_write
        });
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let mut received = 0;
        loop {
            let n = watched.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n;
        }
        assert_eq!(received, 6, "every byte sent while talking arrived");
        assert!(started.elapsed() >= Duration::from_millis(900), "closed only once silent");
        let _ = talker.await;
        Ok(())
    }
}
