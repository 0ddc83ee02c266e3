//! The session state machine on a temporary store, with no HTTP in between: what each PATCH
//! leaves in the store, the events, and the watchdog's endings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_blob::{BlobState, BlobStore, BlobStoreOptions};
use sluice_proto::BlobKey;

use super::session::{Ending, PatchBody, Session};
use super::{ProgressiveConfig, UploadContext, new_record};
use crate::error::ApiError;
use crate::events::{EventKind, Events};

struct Bench {
    cx: UploadContext,
    _dir: tempfile::TempDir,
}

fn bench(config: ProgressiveConfig) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), BlobStoreOptions::default()).unwrap();
    let cx = UploadContext::open(
        store,
        "g1".parse().unwrap(),
        Events::new(None),
        None,
        config,
        Duration::from_secs(5),
        Arc::default(),
    )
    .unwrap();
    Bench { cx, _dir: dir }
}

async fn create(cx: &UploadContext, length: u64, mts: u64) -> Arc<Session> {
    let mut metadata = BTreeMap::new();
    metadata.insert("sender".to_owned(), "alice".to_owned());
    let record = new_record(
        length,
        mts,
        "application/octet-stream".into(),
        String::new(),
        &metadata,
        false,
    );
    cx.uploads.create(record, &cx.config).await.unwrap()
}

async fn patch(
    cx: &UploadContext,
    session: &Arc<Session>,
    offset: u64,
    bytes: &[u8],
) -> Result<u64, ApiError> {
    let body = PatchBody {
        stream: futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            bytes,
        ))]),
        checksum: None,
        idle: Duration::from_secs(5),
    };
    session.patch(cx, offset, body, None).await
}

async fn stored(cx: &UploadContext, key: BlobKey) -> (BlobState, Vec<u8>) {
    let reader = cx.store.open_reader(key).unwrap().expect("stored");
    let mut bytes = Vec::new();
    reader
        .read_from(0, |b| bytes.extend_from_slice(b))
        .await
        .unwrap();
    (reader.meta().state, bytes)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn the_file_is_committed_at_the_mts_and_completed_at_the_end() {
    let b = bench(ProgressiveConfig::default());
    let cx = &b.cx;
    let mut events = cx.events.subscribe();
    let bytes = data(10_000);
    let session = create(cx, 10_000, 4_000).await;

    assert_eq!(
        patch(cx, &session, 0, &bytes[..3_000]).await.unwrap(),
        3_000
    );
    assert_eq!(session.key(), None, "no id before the MTS");

    assert_eq!(
        patch(cx, &session, 3_000, &bytes[3_000..6_000])
            .await
            .unwrap(),
        6_000
    );
    let key = session.key().expect("an id at the MTS");
    let (state, prefix) = stored(cx, key).await;
    assert_eq!(state, BlobState::Partial { total: 10_000 });
    assert_eq!(prefix, &bytes[..4_000], "committed at exactly the MTS");
    assert_eq!(events.try_recv().unwrap().kind, EventKind::Committed);

    assert_eq!(
        patch(cx, &session, 6_000, &bytes[6_000..]).await.unwrap(),
        10_000
    );
    let (state, whole) = stored(cx, key).await;
    assert_eq!(state, BlobState::Complete);
    assert_eq!(whole, bytes);
    let done = events.try_recv().unwrap();
    assert_eq!(
        (done.kind, done.sender.as_str()),
        (EventKind::Completed, "alice")
    );
    assert_eq!(session.view().ending, Some(Ending::Completed));
    assert!(
        !session.data_path().exists(),
        "the session's files are removed"
    );
    assert_eq!(cx.uploads.live(&key).map(|s| s.id.clone()), None);
}

#[tokio::test]
async fn a_patch_at_the_wrong_offset_changes_nothing() {
    let b = bench(ProgressiveConfig::default());
    let cx = &b.cx;
    let session = create(cx, 100, 100).await;
    patch(cx, &session, 0, &data(40)).await.unwrap();
    match patch(cx, &session, 10, &data(5)).await {
        Err(ApiError::OffsetMismatch { expected: 40 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(session.view().received, 40);
}

#[tokio::test]
async fn a_body_past_the_declared_length_is_refused_whole() {
    let b = bench(ProgressiveConfig::default());
    let cx = &b.cx;
    let session = create(cx, 100, 100).await;
    assert!(matches!(
        patch(cx, &session, 0, &data(150)).await,
        Err(ApiError::BadRequest(_))
    ));
    assert_eq!(session.view().received, 0);
    assert_eq!(patch(cx, &session, 0, &data(100)).await.unwrap(), 100);
}

#[tokio::test]
async fn the_watchdog_finalises_a_quiet_sender_after_its_mts_and_drops_one_before() {
    let b = bench(ProgressiveConfig {
        abandon_after: Duration::from_millis(200),
        ..ProgressiveConfig::default()
    });
    let cx = &b.cx;
    let bytes = data(1_000);
    let past = create(cx, 1_000, 300).await;
    patch(cx, &past, 0, &bytes[..500]).await.unwrap();
    let before = create(cx, 1_000, 800).await;
    patch(cx, &before, 0, &bytes[..500]).await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watchdog = tokio::spawn(super::run_watchdog(cx.clone(), async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cx.sessions() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    watchdog.await.unwrap();

    assert_eq!(past.view().ending, Some(Ending::Abandoned));
    let (state, kept) = stored(cx, past.key().unwrap()).await;
    assert_eq!(state, BlobState::Abandoned { total: 1_000 });
    assert_eq!(kept, &bytes[..500], "everything that arrived is kept");
    assert_eq!(before.view().ending, Some(Ending::Dropped));
    assert_eq!(before.key(), None);
    assert_eq!(cx.store.files(), 1, "a dropped upload leaves no file");
}
