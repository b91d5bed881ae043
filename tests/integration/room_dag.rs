//! What the room DAG keeps across the local send path: fields that only federation writes
//! (issue 23) must survive every local write of the same record.

use serde_json::json;
use tuwunel::storage::{Batch, codec::Json, rooms::ROOM_HEADS_TABLE};

use crate::common::TestServer;

#[tokio::test]
async fn a_local_send_keeps_the_backfill_seq_of_the_room_heads() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let (status, body) = server.post_as(&alice, "/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room_id = ruma::OwnedRoomId::try_from(body["room_id"].as_str().expect("room id"))
        .expect("room id parses");

    // As backfill will leave it: the room has handed out backfill places.
    let storage = std::sync::Arc::clone(&server.server().services().storage);
    let short = tuwunel::rooms::room(&storage, &room_id).expect("read").expect("room").short;
    let mut heads = tuwunel::rooms::heads(storage.engine(), short).expect("read").expect("heads");
    assert_eq!(heads.backfill_seq, 0);
    heads.backfill_seq = 5;
    let mut batch = Batch::new();
    ROOM_HEADS_TABLE.put(&mut batch, &short, &Json(heads.clone()));
    storage.writer().commit(batch).await.expect("commit");
    drop(storage);
    // The room's actor reads the heads again.
    server.restart().await;

    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1");
    let (status, body) =
        server.put_as(&alice, &path, json!({"msgtype": "m.text", "body": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    let storage = &server.server().services().storage;
    let after = tuwunel::rooms::heads(storage.engine(), short).expect("read").expect("heads");
    assert_ne!(after.extremities, heads.extremities, "the send wrote the heads");
    assert_eq!(after.backfill_seq, 5);
    server.stop().await;
}
