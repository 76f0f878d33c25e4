//! The reliable layer over in-process pipes, clean and damaged.

use std::time::Duration;

use e2t_link::{FaultConfig, Faulty, Link, LinkConfig, LinkError, Transport, in_proc_pair};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg() -> LinkConfig {
    LinkConfig {
        max_segment: 512,
        min_segment: 32,
        rto_initial: Duration::from_millis(30),
        rto_min: Duration::from_millis(5),
        rto_max: Duration::from_millis(200),
        keepalive: Duration::from_millis(50),
        peer_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..LinkConfig::default()
    }
}

fn messages(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..3000);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect()
}

fn recv_n(link: &mut Link, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        match link.recv(Duration::from_secs(20)).unwrap() {
            Some(r) => got.push(r.bytes),
            None => panic!(
                "timed out after {} of {n} messages; stats {:?}",
                got.len(),
                link.stats()
            ),
        }
    }
    got
}

/// Echo server on the passive side: every message comes back reversed.
fn spawn_echo(t: Box<dyn Transport>, c: LinkConfig) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut l = Link::accept(t, c);
        loop {
            match l.recv(Duration::from_millis(100)) {
                Ok(Some(r)) => {
                    let mut b = r.bytes;
                    b.reverse();
                    if l.reply(r.session, b).is_err() {
                        return;
                    }
                }
                Ok(None) | Err(LinkError::PeerSilent { .. }) => {}
                Err(_) => return,
            }
        }
    })
}

fn round_trip(fault: Option<FaultConfig>, n: usize) -> e2t_link::LinkStats {
    let (h, a) = in_proc_pair();
    let echo = spawn_echo(Box::new(a), cfg());
    let host: Box<dyn Transport> = match fault {
        Some(f) => Box::new(Faulty::new(h, f)),
        None => Box::new(h),
    };
    let mut link = Link::connect(host, cfg()).unwrap();
    let msgs = messages(7, n);
    for m in &msgs {
        link.send(m.clone()).unwrap();
    }
    let got = recv_n(&mut link, n);
    for (m, g) in msgs.iter().zip(&got) {
        let mut r = g.clone();
        r.reverse();
        assert_eq!(&r, m);
    }
    let stats = link.stats();
    drop(link);
    echo.join().unwrap();
    stats
}

#[test]
fn clean_link_delivers_in_order() {
    let s = round_trip(None, 40);
    assert_eq!(s.messages_sent, 40);
    assert_eq!(s.messages_received, 40);
    // (No assertion on retransmissions: a loaded machine may delay an ack past the RTO.)
    assert_eq!(s.crc_errors, 0);
    assert!(s.efficiency() > 0.5, "{s:?}");
}

#[test]
fn damaged_link_still_delivers_exactly_once_in_order() {
    let f = FaultConfig {
        corrupt: 0.01,
        drop: 0.001,
        duplicate: 0.001,
        delay_rate: 0.01,
        delay: Duration::from_millis(2),
        seed: 11,
    };
    let s = round_trip(Some(f), 30);
    assert_eq!(s.messages_received, 30);
    assert!(
        s.crc_errors + s.framing_errors > 0,
        "faults were injected: {s:?}"
    );
    assert!(s.frames_retransmitted > 0, "{s:?}");
    assert!(s.segment < 512, "segment size adapted: {s:?}");
}

#[test]
fn unanswered_handshake_is_a_clean_error() {
    let (h, _far_end_kept_open) = in_proc_pair();
    let c = LinkConfig {
        connect_timeout: Duration::from_millis(200),
        ..cfg()
    };
    let e = Link::connect(Box::new(h), c).err().unwrap();
    assert!(matches!(e, LinkError::ConnectTimeout { .. }), "{e}");
    assert!(e.to_string().contains("sim:host"), "{e}");
}

#[test]
fn host_notices_a_hung_agent_mid_session() {
    let (h, a) = in_proc_pair();
    let c = LinkConfig {
        peer_timeout: Duration::from_millis(300),
        ..cfg()
    };
    // A "hung" agent: its link answers the handshake, then the transport stops passing bytes.
    let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    struct Gate<T> {
        inner: T,
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
    impl<T: Transport> Transport for Gate<T> {
        fn read(&mut self, b: &mut [u8], t: Duration) -> std::io::Result<usize> {
            let n = self.inner.read(b, t)?;
            Ok(if self.open.load(std::sync::atomic::Ordering::SeqCst) {
                n
            } else {
                0
            })
        }
        fn write(&mut self, b: &[u8], t: Duration) -> std::io::Result<usize> {
            if self.open.load(std::sync::atomic::Ordering::SeqCst) {
                self.inner.write(b, t)
            } else {
                Ok(b.len())
            }
        }
        fn describe(&self) -> String {
            "gate".into()
        }
    }
    let agent_link = Link::accept(
        Box::new(Gate {
            inner: a,
            open: gate.clone(),
        }),
        c.clone(),
    );
    let mut link = Link::connect(Box::new(h), c).unwrap();
    gate.store(false, std::sync::atomic::Ordering::SeqCst);
    link.send(vec![1, 2, 3]).unwrap();
    let e = match link.recv(Duration::from_secs(5)) {
        Err(e) => e,
        Ok(None) => panic!("no error after 5 s"),
        Ok(Some(_)) => panic!("unexpected message"),
    };
    assert!(matches!(e, LinkError::PeerSilent { .. }), "{e}");
    assert!(e.to_string().contains("silent"), "{e}");
    drop(agent_link);
}

#[test]
fn restarted_agent_answers_reset_and_stale_replies_are_dropped() {
    let (h, a) = in_proc_pair();
    let c = cfg();
    // First agent link: serves one session.
    let mut agent = Link::accept(Box::new(a), c.clone());
    let host = Link::connect(Box::new(h), c.clone()).unwrap();
    host.send(b"one".to_vec()).unwrap();
    let r = agent.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(r.bytes, b"one");
    let old_session = r.session;
    drop(host);
    // A second host session on a fresh pipe to the same kind of agent; an old-session reply is dropped.
    let (h2, a2) = in_proc_pair();
    let mut agent2 = Link::accept(Box::new(a2), c.clone());
    let mut host2 = Link::connect(Box::new(h2), c.clone()).unwrap();
    host2.send(b"two".to_vec()).unwrap();
    let r2 = agent2.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_ne!(r2.session, old_session);
    agent2.reply(old_session, b"stale".to_vec()).unwrap();
    agent2.reply(r2.session, b"fresh".to_vec()).unwrap();
    assert_eq!(
        host2.recv(Duration::from_secs(5)).unwrap().unwrap().bytes,
        b"fresh"
    );
    drop(agent);
}

#[test]
fn agent_that_lost_its_state_resets_the_host() {
    // Same pty, new agent link (as after an agent restart): the host's session is unknown to it.
    let (master, path, _slave) = e2t_link::open_pty().unwrap();
    let c = cfg();
    let agent1 = Link::accept(
        Box::new(e2t_link::open_serial(&path, 921_600).unwrap()),
        c.clone(),
    );
    let mut host = Link::connect(Box::new(master), c.clone()).unwrap();
    drop(agent1);
    let _agent2 = Link::accept(Box::new(e2t_link::open_serial(&path, 921_600).unwrap()), c);
    host.send(b"x".to_vec()).unwrap();
    let e = host.recv(Duration::from_secs(5)).err().unwrap();
    assert!(matches!(e, LinkError::PeerReset { .. }), "{e}");
}

#[test]
fn closed_pipe_is_a_transport_error() {
    let (h, a) = in_proc_pair();
    let c = cfg();
    let agent = Link::accept(Box::new(a), c.clone());
    let mut host = Link::connect(Box::new(h), c).unwrap();
    drop(agent);
    host.send(b"x".to_vec()).ok();
    let e = host.recv(Duration::from_secs(5)).err().unwrap();
    assert!(matches!(e, LinkError::Transport { .. }), "{e}");
}

#[test]
fn malformed_frames_of_every_kind_are_counted_and_the_link_recovers() {
    use e2t_proto::frame::{FLAG_FIN, Frame, FrameKind, MAX_WIRE_FRAME};
    let (mut raw, a) = in_proc_pair();
    let mut agent = Link::accept(Box::new(a), cfg());
    let session = 0x1234;
    let mut bad_crc = Frame::control(FrameKind::Sync, session, 0, 0).encode();
    bad_crc[3] ^= 0x40;
    let unknown_kind = {
        // A well-formed frame (valid CRC) of kind 9: build it by hand.
        let mut body = vec![9u8, 0];
        body.extend_from_slice(&[0; 16]);
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut w = cobs::encode_vec(&body);
        w.push(0);
        w
    };
    let mut stream = Vec::new();
    stream.extend(vec![0x41u8; MAX_WIRE_FRAME + 5]); // oversize (no delimiter for too long)
    stream.push(0);
    stream.extend([0x05, 0x01, 0x00]); // COBS code says 4 more bytes, delimiter after 1
    stream.extend([0x03, 0x11, 0x22, 0x00]); // decodes to 2 bytes: too short
    stream.extend(bad_crc);
    stream.extend(unknown_kind);
    stream.extend(Frame::control(FrameKind::Sync, session, 0, 0).encode());
    stream.extend(
        Frame {
            kind: FrameKind::Data,
            flags: FLAG_FIN,
            session,
            seq: 0,
            ack: 0,
            sack: 0,
            payload: b"hi".to_vec(),
        }
        .encode(),
    );
    raw.write(&stream, Duration::ZERO).unwrap();
    let r = agent.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((r.session, r.bytes.as_slice()), (session, &b"hi"[..]));
    let s = agent.stats();
    assert_eq!(s.crc_errors, 1, "{s:?}");
    assert_eq!(
        s.framing_errors, 4,
        "oversize, COBS, short, unknown kind: {s:?}"
    );
    assert!(s.last_frame_error.is_some());
}
