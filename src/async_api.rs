//! The async door onto the engine: the operations of `store.rs` and `lease.rs`, whose wait
//! for durability is a future instead of a parked thread.
//!
//! Each method does its index work at once, on the first poll, exactly as the blocking
//! method does (same answers, same errors); only the wait until the record the answer rests
//! on is durable is a future, woken by the store's commit thread with the task's `Waker`.
//! Nothing here depends on a runtime: the futures work under tokio (current-thread or
//! multi-thread), `futures::executor::block_on`, smol, or any executor.
//!
//! **Cancel safety.** Dropping one of these futures leaves the store consistent and
//! usable, and leaks no lock and no waiter. The operation has then either happened whole or
//! not at all: dropped before its first poll, nothing was done; dropped after it, the
//! operation was done and its record becomes durable with the next sync, like any other.
//! What a caller learns from a dropped future is what it learns from a crash after the
//! blocking call: a dropped `claim_async` may have claimed the key (a retry then answers
//! `Duplicate`). Where the work must run even then, use `begin_async`/`complete_async`: a
//! lease that is never completed runs out, and the key can be begun again.

use std::time::Duration;

use crate::engine::Seen;
use crate::error::Result;
use crate::lease::{Begin, Ticket};
use crate::store::{Claim, ClaimRequest, Store};

impl Store {
    /// [`claim`](Store::claim), waiting for durability without blocking the thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// use oncelog::{Claim, Store};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(72 * 3600);
    /// // Any executor works; here, the simplest one.
    /// let first = futures::executor::block_on(store.claim_async("evt_1", ttl))?;
    /// assert_eq!(first, Claim::New);
    /// let again = futures::executor::block_on(store.claim_async("evt_1", ttl))?;
    /// assert!(!again.is_new());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// **Cancel safety:** a future dropped after its first poll has claimed the key (or
    /// found it claimed): the claim becomes durable with the next sync. See the module
    /// docs.
    pub async fn claim_async(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Claim> {
        let (answer, wait) = self.claim_now(key.as_ref(), ttl)?;
        self.engine().settled(wait).await?;
        Ok(answer)
    }

    /// [`claim_with_outcome`](Store::claim_with_outcome), waiting for durability without
    /// blocking the thread.
    ///
    /// **Cancel safety:** as for [`claim_async`](Store::claim_async): a future dropped after
    /// its first poll has claimed the key with its outcome.
    pub async fn claim_with_outcome_async(
        &self,
        key: impl AsRef<[u8]>,
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<Claim> {
        let (answer, wait) = self.claim_with_outcome_now(key.as_ref(), outcome, ttl)?;
        self.engine().settled(wait).await?;
        Ok(answer)
    }

    /// [`claim_many`](Store::claim_many), waiting for durability without blocking the
    /// thread: one durable write for the whole batch.
    ///
    /// **Cancel safety:** a future dropped after its first poll has claimed every new key
    /// of the batch: they become durable with the next sync.
    pub async fn claim_many_async<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
    ) -> Result<Vec<Claim>> {
        let (answers, wait) = self.claim_many_now(keys, ttl)?;
        self.engine().settled(wait).await?;
        Ok(answers)
    }

    /// [`claim_batch`](Store::claim_batch), waiting for durability without blocking the
    /// thread: one durable write for the whole batch.
    ///
    /// **Cancel safety:** a future dropped after its first poll has claimed every new key
    /// of the batch, with its outcome: they become durable with the next sync.
    pub async fn claim_batch_async(&self, requests: &[ClaimRequest<'_>]) -> Result<Vec<Claim>> {
        let (answers, wait) = self.claim_batch_now(requests)?;
        self.engine().settled(wait).await?;
        Ok(answers)
    }

    /// [`get`](Store::get), waiting without blocking the thread for the key's newest
    /// record to be durable (an answer is never based on a record a crash could lose).
    ///
    /// **Cancel safety:** `get` changes nothing; dropping the future at any point is fine.
    pub async fn get_async(&self, key: impl AsRef<[u8]>) -> Result<Option<Seen>> {
        let (seen, wait) = self.get_now(key.as_ref())?;
        self.engine().settled(wait).await?;
        Ok(seen)
    }

    /// [`remove`](Store::remove), waiting for durability without blocking the thread.
    ///
    /// **Cancel safety:** a future dropped after its first poll has removed the key; the
    /// removal becomes durable with the next sync.
    pub async fn remove_async(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let (held, wait) = self.remove_now(key.as_ref())?;
        self.engine().settled(wait).await?;
        Ok(held)
    }

    /// [`begin`](Store::begin), waiting for durability without blocking the thread.
    ///
    /// **Cancel safety:** a future dropped after its first poll may have acquired the
    /// lease, and its ticket is lost with the future: the key stays in flight until the
    /// lease runs out, then the next `begin` acquires it as the next attempt.
    pub async fn begin_async(&self, key: impl AsRef<[u8]>, lease: Duration) -> Result<Begin> {
        let (answer, wait) = self.begin_now(key.as_ref(), lease, None)?;
        self.engine().settled(wait).await?;
        Ok(answer)
    }

    /// [`begin_with_fingerprint`](Store::begin_with_fingerprint), waiting for durability
    /// without blocking the thread.
    ///
    /// **Cancel safety:** as for [`begin_async`](Store::begin_async).
    pub async fn begin_with_fingerprint_async(
        &self,
        key: impl AsRef<[u8]>,
        lease: Duration,
        fingerprint: &[u8],
    ) -> Result<Begin> {
        let (answer, wait) = self.begin_now(key.as_ref(), lease, Some(fingerprint))?;
        self.engine().settled(wait).await?;
        Ok(answer)
    }

    /// [`complete`](Store::complete), waiting for durability without blocking the thread.
    ///
    /// **Cancel safety:** a future dropped after its first poll has stored the outcome
    /// (or failed, changing nothing); the outcome becomes durable with the next sync.
    /// Completing again with the same ticket then fails with `StaleTicket` ("already
    /// completed"), and a `begin` of the key answers `Done`.
    pub async fn complete_async(
        &self,
        ticket: &Ticket,
        outcome: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let wait = self.complete_now(ticket, outcome, ttl)?;
        self.engine().settled(wait).await
    }

    /// [`abandon`](Store::abandon), waiting for durability without blocking the thread.
    ///
    /// **Cancel safety:** a future dropped after its first poll has freed the key.
    pub async fn abandon_async(&self, ticket: &Ticket) -> Result<()> {
        let wait = self.abandon_now(ticket)?;
        self.engine().settled(wait).await
    }

    /// [`extend`](Store::extend), waiting for durability without blocking the thread.
    ///
    /// **Cancel safety:** a future dropped after its first poll has moved the deadline.
    pub async fn extend_async(&self, ticket: &Ticket, lease: Duration) -> Result<()> {
        let wait = self.extend_now(ticket, lease)?;
        self.engine().settled(wait).await
    }

    /// [`sync`](Store::sync), without blocking the thread: resolves once everything
    /// acknowledged before the call is durable, whatever the store's
    /// [`Durability`](crate::Durability).
    ///
    /// **Cancel safety:** dropping it cancels only the wait.
    pub async fn sync_async(&self) -> Result<()> {
        self.engine().synced().await
    }
}
