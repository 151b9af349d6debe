use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn holds_exactly_capacity_and_hands_full_messages_back() {
    let (tx, mut rx) = channel::<u32>(3);
    for i in 0..3 {
        tx.try_send(i).unwrap();
    }
    assert_eq!(tx.try_send(7), Err(TrySendError::Full(7)));
    // Room is given back when the receiver has taken its whole batch (here, the three).
    assert_eq!(rx.try_recv(), Ok(0));
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(tx.try_send(7), Err(TrySendError::Full(7)));
    assert_eq!(rx.try_recv(), Ok(2));
    for i in 3..6 {
        tx.try_send(i).unwrap();
    }
    assert_eq!(tx.try_send(8).unwrap_err().into_inner(), 8);
    let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got, [3, 4, 5]);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn room_comes_back_in_groups_while_a_large_batch_is_received() {
    let cap = 3 * RELEASE_EVERY;
    let (tx, mut rx) = channel::<usize>(cap);
    for i in 0..cap {
        tx.try_send(i).unwrap();
    }
    for i in 0..RELEASE_EVERY - 1 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert!(matches!(tx.try_send(0), Err(TrySendError::Full(0))));
    assert_eq!(rx.try_recv(), Ok(RELEASE_EVERY - 1));
    // A group received: exactly its room is back.
    for i in 0..RELEASE_EVERY {
        tx.try_send(cap + i).unwrap();
    }
    assert!(matches!(tx.try_send(0), Err(TrySendError::Full(0))));
    let got: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        got,
        (RELEASE_EVERY..cap + RELEASE_EVERY).collect::<Vec<_>>()
    );
}

#[test]
fn keeps_order_across_batches() {
    let (tx, mut rx) = channel::<u32>(1000);
    let mut next_in = 0;
    let mut got = Vec::new();
    for round in 0..50 {
        for _ in 0..(round % 7) + 1 {
            tx.try_send(next_in).unwrap();
            next_in += 1;
        }
        // Sometimes take part of what is queued, so that sends land behind a batch.
        for _ in 0..round % 3 {
            if let Ok(v) = rx.try_recv() {
                got.push(v);
            }
        }
    }
    while let Ok(v) = rx.try_recv() {
        got.push(v);
    }
    assert_eq!(got, (0..next_in).collect::<Vec<_>>());
}

#[test]
fn close_refuses_senders_but_keeps_what_is_queued() {
    let (tx, mut rx) = channel::<u32>(10);
    tx.try_send(1).unwrap();
    tx.try_send(2).unwrap();
    assert!(!tx.is_closed());
    rx.close();
    assert!(tx.is_closed());
    assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rt().block_on(rx.recv()), Some(2));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rt().block_on(rx.recv()), None);
}

#[test]
fn the_receiver_gone_closes_the_queue() {
    let (tx, rx) = channel::<u32>(10);
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.try_send(1), Err(TrySendError::Closed(1)));
    assert_eq!(rt().block_on(tx.send(2)), Err(SendError(2)));
}

#[test]
fn the_last_sender_gone_ends_the_receiver_after_the_queue() {
    let (tx, mut rx) = channel::<u32>(10);
    let tx2 = tx.clone();
    tx.try_send(1).unwrap();
    drop(tx);
    tx2.try_send(2).unwrap();
    assert_eq!(rx.try_recv(), Ok(1));
    drop(tx2);
    assert_eq!(rx.try_recv(), Ok(2));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rt().block_on(rx.recv()), None);
}

#[test]
fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_sender_leaving() {
    let (tx, mut rx) = channel::<u32>(10);
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.try_send(5).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
    });
    let rt = rt();
    assert_eq!(rt.block_on(rx.recv()), Some(5));
    assert_eq!(rt.block_on(rx.recv()), None);
    sender.join().unwrap();
}

#[test]
fn send_and_blocking_send_wait_for_room() {
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(0).unwrap();
    let sent = Arc::new(AtomicBool::new(false));
    let (tx2, sent2) = (tx.clone(), sent.clone());
    let blocking = std::thread::spawn(move || {
        tx2.blocking_send(1).unwrap();
        sent2.store(true, Ordering::SeqCst);
    });
    let tx3 = tx.clone();
    let asynchronous = std::thread::spawn(move || rt().block_on(tx3.send(2)).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    assert!(!sent.load(Ordering::SeqCst), "sent into a full queue");
    // Each message taken lets one waiting sender in.
    let mut got = vec![rx.try_recv().unwrap()];
    let rt = rt();
    got.push(rt.block_on(rx.recv()).unwrap());
    got.push(rt.block_on(rx.recv()).unwrap());
    blocking.join().unwrap();
    asynchronous.join().unwrap();
    got[1..].sort();
    assert_eq!(got, [0, 1, 2]);
}

#[test]
fn a_closed_queue_releases_waiting_senders() {
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(0).unwrap();
    let waiting = std::thread::spawn(move || tx.blocking_send(1));
    std::thread::sleep(Duration::from_millis(50));
    rx.close();
    assert_eq!(waiting.join().unwrap(), Err(SendError(1)));
    assert_eq!(rx.try_recv(), Ok(0));
}

#[test]
fn many_senders_lose_nothing_keep_each_order_and_never_exceed_capacity() {
    const THREADS: u64 = 4;
    const EACH: u64 = 20_000;
    const CAP: usize = 64;
    let (tx, mut rx) = channel::<(u64, u64)>(CAP);
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut full = 0u64;
                for i in 0..EACH {
                    let mut v = (t, i);
                    loop {
                        match tx.try_send(v) {
                            Ok(()) => break,
                            Err(TrySendError::Full(back)) => {
                                full += 1;
                                v = back;
                                std::thread::yield_now();
                            }
                            Err(TrySendError::Closed(_)) => panic!("closed"),
                        }
                    }
                }
                full
            })
        })
        .collect();
    drop(tx);
    let mut next = [0u64; THREADS as usize];
    let rt = rt();
    while let Some((t, i)) = rt.block_on(rx.recv()) {
        assert_eq!(i, next[t as usize], "sender {t} out of order");
        next[t as usize] += 1;
        assert!(rx.shared.len.load(Ordering::SeqCst) <= CAP);
    }
    let fulls: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(next, [EACH; THREADS as usize]);
    // A 64-message queue against four busy senders is full at times.
    assert!(fulls > 0);
}

#[test]
fn a_buffer_that_grew_large_is_freed_once_drained() {
    let (tx, mut rx) = channel::<[u8; 4096]>(1024);
    for _ in 0..600 {
        tx.try_send([0; 4096]).unwrap();
    }
    while rx.try_recv().is_ok() {}
    // Both buffers held 600 x 4 KiB at some point; neither keeps it.
    tx.try_send([1; 4096]).unwrap();
    assert!(rx.try_recv().is_ok());
    assert!(rx.local.capacity() * 4096 <= KEEP_BYTES);
    assert!(rx.shared.lock().queue.capacity() * 4096 <= KEEP_BYTES);
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

#[test]
fn a_waiting_sender_keeps_the_room_it_waited_for() {
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(0).unwrap();
    let mut waiting = std::pin::pin!(tx.send(1));
    assert!(waiting.as_mut().poll(&mut noop_cx()).is_pending());
    assert_eq!(rx.try_recv(), Ok(0));
    // The room just made is the waiting sender's (as in tokio); a later try_send must not
    // take it, or a control message in `blocking_send` starves behind the hot path.
    assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
    assert!(waiting.as_mut().poll(&mut noop_cx()).is_ready());
    assert_eq!(rx.try_recv(), Ok(1));
}

#[test]
fn waiting_senders_complete_in_the_order_they_waited() {
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(0).unwrap();
    let mut first = std::pin::pin!(tx.send(1));
    let mut second = std::pin::pin!(tx.send(2));
    assert!(first.as_mut().poll(&mut noop_cx()).is_pending());
    assert!(second.as_mut().poll(&mut noop_cx()).is_pending());
    assert_eq!(rx.try_recv(), Ok(0));
    // tokio: "calls to send complete in the order they were requested".
    assert!(second.as_mut().poll(&mut noop_cx()).is_pending());
    assert!(first.as_mut().poll(&mut noop_cx()).is_ready());
    assert_eq!(rx.try_recv(), Ok(1));
    assert!(second.as_mut().poll(&mut noop_cx()).is_ready());
    assert_eq!(rx.try_recv(), Ok(2));
}

/// Stress: blocking and async senders against a receiver whose `recv` is cancelled by a
/// timer in a select; nothing lost, nothing hangs, the bound holds.
#[test]
fn stress_cancelled_recv_and_waiting_senders() {
    const THREADS: u64 = 4;
    const EACH: u64 = 5_000;
    for cap in [1usize, 2, 33, 100] {
        let (tx, mut rx) = channel::<(u64, u64)>(cap);
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    if t % 2 == 0 {
                        for i in 0..EACH {
                            tx.blocking_send((t, i)).unwrap();
                        }
                    } else {
                        rt().block_on(async {
                            for i in 0..EACH {
                                tx.send((t, i)).await.unwrap();
                            }
                        })
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u64; THREADS as usize];
        let rt = rt();
        rt.block_on(async {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some((t, i)) => {
                            assert_eq!(i, next[t as usize]);
                            next[t as usize] += 1;
                            assert!(rx.shared.len.load(Ordering::SeqCst) <= cap);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_micros(1)) => {}
                }
            }
        });
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(next, [EACH; THREADS as usize]);
        assert_eq!(rx.shared.len.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn a_dropped_waiting_sender_passes_its_turn_on() {
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(Default::default()));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(0).unwrap();
    let mut first = Box::pin(tx.send(1));
    let mut second = Box::pin(tx.send(2));
    assert!(first.as_mut().poll(&mut noop_cx()).is_pending());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    assert_eq!(rx.try_recv(), Ok(0));
    drop(first);
    assert!(
        count.0.load(Ordering::SeqCst) > 0,
        "the next sender was not woken"
    );
    assert!(second.as_mut().poll(&mut cx).is_ready());
    assert_eq!(rx.try_recv(), Ok(2));
}

#[test]
fn stress_cancelled_sends() {
    let (tx, mut rx) = channel::<u64>(2);
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                rt().block_on(async {
                    let mut sent = 0u64;
                    for _ in 0..5_000 {
                        tokio::select! {
                            r = tx.send(1) => { r.unwrap(); sent += 1; }
                            _ = tokio::task::yield_now() => {}
                        }
                    }
                    sent
                })
            })
        })
        .collect();
    drop(tx);
    let mut got = 0u64;
    rt().block_on(async {
        while rx.recv().await.is_some() {
            got += 1;
        }
    });
    let sent: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(got, sent);
}

#[test]
fn dropping_the_receiver_drops_what_is_queued() {
    let held = Arc::new(());
    let (tx, rx) = channel::<Arc<()>>(4);
    tx.try_send(held.clone()).unwrap();
    drop(rx);
    // tokio's receiver drops the queued messages when it goes, senders or not.
    assert_eq!(Arc::strong_count(&held), 1);
}
