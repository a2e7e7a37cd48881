//! The witness's opening lines: a plain greeting, or, when the cluster shares a secret, a challenge and two HMAC-SHA256 hellos over fresh nonces.
//!
//! Without a secret the witness greets at once: `standin-witness INC`.
//! With one, it sends `standin-witness-challenge NS` (a fresh nonce); the
//! watcher answers `standin-witness-hello NW MAC(watcher, NS, NW)` with its
//! own nonce, and only then does the witness greet, with
//! `standin-witness INC MAC(witness, NW, INC)`. Each side's proof covers
//! the other's nonce, so neither can be replayed: a stranger cannot make a
//! witness hold its connection, nor pass for another incarnation of a
//! leader (which would prove that leader dead).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{ConfigError, read_secret};

/// What the witness sends first (without a secret), or last (with one);
/// the incarnation and, with a secret, its proof follow.
pub(super) const GREETING: &str = "standin-witness ";
/// What a witness with a secret sends first; a nonce follows.
const CHALLENGE: &str = "standin-witness-challenge ";
/// What a watcher with a secret answers; its nonce and proof follow.
const HELLO: &str = "standin-witness-hello ";
/// The longest line read: anything longer is not a witness.
const MAX_LINE: usize = 256;
/// Bytes of randomness in a nonce.
const NONCE_BYTES: usize = 16;

/// The cluster's witness secret (`node.witnessSecretFile`).
pub(crate) struct Secret(hmac::Key);

// By hand: the key never shows.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The secret of the file at `path`; the error names the key.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::new(
            read_secret("node.witnessSecretFile", path)?.as_bytes(),
        ))
    }

    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The proof, in hex, that `who` holds the secret, over `parts`.
    fn prove(&self, who: &str, parts: &[&str]) -> String {
        hex(hmac::sign(&self.0, &message(who, parts)).as_ref())
    }

    /// Whether `proof` is `who`'s over `parts` (ring compares in constant time).
    fn verify(&self, who: &str, parts: &[&str], proof: &str) -> bool {
        unhex(proof).is_some_and(|tag| hmac::verify(&self.0, &message(who, parts), &tag).is_ok())
    }
}

/// What a proof signs: who proves, then each part, length-prefixed so that
/// no two lists of parts sign alike.
fn message(who: &str, parts: &[&str]) -> Vec<u8> {
    let mut message = Vec::new();
    for part in std::iter::once(&who).chain(parts) {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part.as_bytes());
    }
    message
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    // The system's random source does not fail on Linux once it is seeded;
    // a zero nonce would still only weaken freshness, not the proof.
    let _ = SystemRandom::new().fill(&mut bytes);
    hex(&bytes)
}

/// Reads one line (without its newline), at most [`MAX_LINE`] bytes.
async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> Result<String, String> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while line.len() < MAX_LINE {
        match stream.read(&mut byte).await {
            Ok(0) => return Err("connected, but closed before a greeting".to_owned()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(error) => return Err(format!("connected, but {error} before a greeting")),
        }
    }
    Err("connected, but the greeting is too long: not a witness".to_owned())
}

/// Why a witness closed a connection without holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unheld {
    /// Over `node.witnessMaxConnections`.
    OverCap,
    /// No hello within the bound.
    NoHello,
    /// A hello without a valid proof of the secret.
    BadHello,
    /// The connection ended or failed first.
    Gone,
}

impl Unheld {
    pub(super) fn label(self) -> &'static str {
        match self {
            Unheld::OverCap => "over_cap",
            Unheld::NoHello => "no_hello",
            Unheld::BadHello => "bad_hello",
            Unheld::Gone => "gone",
        }
    }
}

/// The witness's side: greets a new connection as `incarnation`, after
/// checking the watcher's hello when there is a secret (within `hello_within`).
pub(super) async fn greet(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    incarnation: &str,
    secret: Option<&Secret>,
    hello_within: Duration,
) -> Result<(), Unheld> {
    let Some(secret) = secret else {
        let greeting = format!("{GREETING}{incarnation}\n");
        return stream
            .write_all(greeting.as_bytes())
            .await
            .map_err(|_| Unheld::Gone);
    };
    let challenge = nonce();
    stream
        .write_all(format!("{CHALLENGE}{challenge}\n").as_bytes())
        .await
        .map_err(|_| Unheld::Gone)?;
    let hello = match tokio::time::timeout(hello_within, read_line(stream)).await {
        Err(_) => return Err(Unheld::NoHello),
        Ok(Err(_)) => return Err(Unheld::Gone),
        Ok(Ok(line)) => line,
    };
    let (theirs, proof) = hello
        .strip_prefix(HELLO)
        .and_then(|rest| rest.split_once(' '))
        .ok_or(Unheld::BadHello)?;
    if !secret.verify("watcher", &[&challenge, theirs], proof) {
        return Err(Unheld::BadHello);
    }
    let proof = secret.prove("witness", &[theirs, incarnation]);
    stream
        .write_all(format!("{GREETING}{incarnation} {proof}\n").as_bytes())
        .await
        .map_err(|_| Unheld::Gone)
}

/// The watcher's side: the incarnation a witness greets with, proven by the
/// secret when there is one. A watcher with a secret believes no greeting
/// without its proof; one without believes only a plain greeting.
pub(super) async fn read_greeting(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    secret: Option<&Secret>,
) -> Result<String, String> {
    let first = read_line(stream).await?;
    let Some(secret) = secret else {
        return match first.strip_prefix(GREETING) {
            Some(incarnation) if !incarnation.contains(' ') => Ok(incarnation.to_owned()),
            Some(_) => Err(
                "the witness proves a secret this node does not hold (set node.witnessSecretFile)"
                    .to_owned(),
            ),
            None if first.starts_with(CHALLENGE) => Err(
                "the witness asks for the cluster's secret, which this node does not hold (set \
                 node.witnessSecretFile)"
                    .to_owned(),
            ),
            None => Err(format!(
                "connected, but greeted with {:?}: not a witness",
                first
            )),
        };
    };
    let Some(challenge) = first.strip_prefix(CHALLENGE) else {
        return Err(format!(
            "the witness did not ask for the cluster's secret (greeted with {:?}): its greeting \
             proves nothing",
            first
        ));
    };
    let ours = nonce();
    let proof = secret.prove("watcher", &[challenge, &ours]);
    stream
        .write_all(format!("{HELLO}{ours} {proof}\n").as_bytes())
        .await
        .map_err(|error| format!("connected, but {error} while saying hello"))?;
    let greeting = read_line(stream).await?;
    let (incarnation, proof) = greeting
        .strip_prefix(GREETING)
        .and_then(|rest| rest.split_once(' '))
        .ok_or_else(|| "the witness's greeting carries no proof of the secret".to_owned())?;
    if secret.verify("witness", &[&ours, incarnation], proof) {
        Ok(incarnation.to_owned())
    } else {
        Err("the witness's greeting does not prove the cluster's secret".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_WITHIN: Duration = Duration::from_secs(5);

    /// Runs the witness's and the watcher's sides against each other.
    async fn meet(
        witness: Option<&Secret>,
        watcher: Option<&Secret>,
    ) -> (Result<(), Unheld>, Result<String, String>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let greeted = async {
            let greeted = greet(&mut a, "0123456789abcdef", witness, HELLO_WITHIN).await;
            drop(a);
            greeted
        };
        tokio::join!(greeted, read_greeting(&mut b, watcher))
    }

    #[tokio::test]
    async fn without_a_secret_the_plain_greeting_is_believed() {
        let (greeted, read) = meet(None, None).await;
        assert_eq!(greeted, Ok(()));
        assert_eq!(read.unwrap(), "0123456789abcdef");
    }

    #[tokio::test]
    async fn with_one_secret_both_sides_prove_it() {
        let secret = Secret::new(b"a cluster secret, 32 bytes long!");
        let (greeted, read) = meet(Some(&secret), Some(&secret)).await;
        assert_eq!(greeted, Ok(()));
        assert_eq!(read.unwrap(), "0123456789abcdef");
    }

    #[tokio::test]
    async fn another_secret_or_none_is_never_believed() {
        let ours = Secret::new(b"a cluster secret, 32 bytes long!");
        let theirs = Secret::new(b"another secret entirely, 32 b..");
        let (greeted, read) = meet(Some(&ours), Some(&theirs)).await;
        assert_eq!(greeted, Err(Unheld::BadHello));
        assert!(read.is_err(), "{read:?}");
        // A plain witness cannot pass for one that proves the secret ...
        let (_, read) = meet(None, Some(&ours)).await;
        assert!(
            read.unwrap_err()
                .contains("did not ask for the cluster's secret")
        );
        // ... and a watcher without it says what to set.
        let (_, read) = meet(Some(&ours), None).await;
        assert!(read.unwrap_err().contains("node.witnessSecretFile"));
    }

    #[tokio::test]
    async fn a_forged_greeting_is_refused() {
        let secret = Secret::new(b"a cluster secret, 32 bytes long!");
        let (mut witness, mut watcher) = tokio::io::duplex(1024);
        let forger = async {
            witness
                .write_all(b"standin-witness-challenge 00\n")
                .await
                .unwrap();
            let _hello = read_line(&mut witness).await.unwrap();
            // A proof replayed from another exchange, or made up.
            let fake = "0".repeat(64);
            witness
                .write_all(format!("standin-witness ffff {fake}\n").as_bytes())
                .await
                .unwrap();
        };
        let (_, read) = tokio::join!(forger, read_greeting(&mut watcher, Some(&secret)));
        assert_eq!(
            read.unwrap_err(),
            "the witness's greeting does not prove the cluster's secret"
        );
    }

    #[tokio::test]
    async fn a_silent_watcher_is_closed_after_the_hello_bound() {
        let secret = Secret::new(b"a cluster secret, 32 bytes long!");
        let (mut witness, _silent) = tokio::io::duplex(1024);
        let within = Duration::from_millis(50);
        let greeted = greet(&mut witness, "inc", Some(&secret), within).await;
        assert_eq!(greeted, Err(Unheld::NoHello));
    }

    #[test]
    fn proofs_bind_who_and_every_part() {
        let secret = Secret::new(b"k");
        let proof = secret.prove("watcher", &["a", "bc"]);
        assert!(secret.verify("watcher", &["a", "bc"], &proof));
        assert!(!secret.verify("witness", &["a", "bc"], &proof));
        assert!(!secret.verify("watcher", &["ab", "c"], &proof));
        assert!(!secret.verify("watcher", &["a", "bc"], &proof[1..]));
        assert!(!secret.verify("watcher", &["a", "bc"], "zz"));
        assert_eq!(unhex("00ff7f"), Some(vec![0, 255, 127]));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
