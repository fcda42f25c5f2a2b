//! argon2 off the event loop: a few worker threads hash new passwords and
//! verify logins; results come back through a channel and wake the loop's
//! [`mio::Waker`]. The loop then handles the request (and appends its log
//! entry) with the result in hand, so argon2 never runs on the loop or under
//! the shared log's lock.
//!
//! A login for an unknown user is verified against a dummy PHC string with the
//! current parameters ([`auth::unknown_user_phc`]): it takes as long as a wrong
//! password, and nothing is hashed at start (restart stays fast).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::auth;

/// Work for the pool.
#[derive(Debug)]
pub enum Job {
    /// Check a login's password against the user's PHC string (`None`: no
    /// such user; verified against the dummy hash, always false).
    Verify {
        password: String,
        phc: Option<String>,
    },
    /// Hash a new user's password.
    Hash { password: String },
}

/// What the pool found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The password matched (false too for an unknown user).
    Verified(bool),
    /// The new password's PHC string, or why hashing failed.
    Hashed(Result<String, String>),
}

/// The worker threads and the two channels.
pub struct LoginPool {
    jobs: Sender<(u64, Job)>,
    done: Receiver<(u64, Done)>,
}

impl LoginPool {
    /// Starts `threads` workers; each finished job wakes `waker`.
    pub fn start(threads: usize, waker: Arc<Waker>) -> Result<LoginPool, auth::AuthError> {
        let dummy: Arc<str> = Arc::from(auth::unknown_user_phc());
        let (jobs, job_rx) = channel::<(u64, Job)>();
        let (done_tx, done) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..threads.max(1) {
            let (job_rx, done_tx) = (Arc::clone(&job_rx), done_tx.clone());
            let (dummy, waker) = (Arc::clone(&dummy), Arc::clone(&waker));
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&job_rx, &done_tx, &dummy, &waker));
            if let Err(e) = spawned {
                return Err(auth::AuthError::Hash(format!("cannot start a worker: {e}")));
            }
        }
        Ok(LoginPool { jobs, done })
    }

    /// Queues `job`; its result comes back from [`LoginPool::finished`] with `ticket`.
    pub fn submit(&self, ticket: u64, job: Job) {
        let _ = self.jobs.send((ticket, job));
    }

    /// A finished job, if any (never blocks).
    pub fn finished(&self) -> Option<(u64, Done)> {
        self.done.try_recv().ok()
    }
}

/// A worker: takes jobs until the pool is dropped.
fn work(
    jobs: &Mutex<Receiver<(u64, Job)>>,
    done: &Sender<(u64, Done)>,
    dummy: &str,
    waker: &Waker,
) {
    let mut memory = auth::Argon2Memory::default();
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((ticket, job)) = next else {
            return;
        };
        let result = run(job, dummy, &mut memory);
        if done.send((ticket, result)).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}

/// Does one job (the slow part: argon2) in the worker's reused `memory`.
pub fn run(job: Job, dummy: &str, memory: &mut auth::Argon2Memory) -> Done {
    match job {
        Job::Verify { password, phc } => match phc {
            Some(phc) => Done::Verified(memory.verify(&password, &phc)),
            None => {
                let _ = memory.verify(&password, dummy);
                Done::Verified(false)
            }
        },
        Job::Hash { password } => Done::Hashed(memory.hash(&password).map_err(|e| e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_verifies_hashes_and_wakes() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let pool = LoginPool::start(2, waker).unwrap();
        let phc = auth::hash_password("pw").unwrap();
        pool.submit(
            1,
            Job::Verify {
                password: "pw".into(),
                phc: Some(phc.clone()),
            },
        );
        pool.submit(
            2,
            Job::Verify {
                password: "no".into(),
                phc: Some(phc),
            },
        );
        pool.submit(
            3,
            Job::Verify {
                password: "pw".into(),
                phc: None,
            },
        );
        pool.submit(
            4,
            Job::Hash {
                password: "new".into(),
            },
        );
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            match pool.finished() {
                Some(d) => got.push(d),
                None => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        got.sort_by_key(|(t, _)| *t);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].1, Done::Verified(true));
        assert_eq!(got[1].1, Done::Verified(false));
        assert_eq!(got[2].1, Done::Verified(false));
        match &got[3].1 {
            Done::Hashed(Ok(phc)) => assert!(auth::verify_password("new", phc)),
            other => panic!("{other:?}"),
        }
    }
}
