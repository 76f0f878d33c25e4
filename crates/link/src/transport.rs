//! Byte-stream transports.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A byte stream with bounded waits. The link's worker thread is its only user.
pub trait Transport: Send {
    /// Read what is available, waiting at most `timeout` for the first byte. `Ok(0)`: nothing arrived.
    /// An error means the stream is gone (peer closed, device unplugged).
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    /// Write a prefix of `buf`, waiting at most `timeout` for room. `Ok(0)`: no room yet.
    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize>;
    /// Human-readable name for errors and logs, e.g. `serial:/dev/ttyUSB1@921600`.
    fn describe(&self) -> String;
    /// Line rate in bytes per second, if the transport has one (serial: baud / 10 for 8N1).
    fn line_rate(&self) -> Option<u64> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        (**self).read(buf, timeout)
    }
    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize> {
        (**self).write(buf, timeout)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn line_rate(&self) -> Option<u64> {
        (**self).line_rate()
    }
}

/// One end of an in-process byte pipe (the `sim` board). Dropping one end makes the other's reads
/// and writes fail, like a closed pty.
pub struct InProc {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    leftover: Vec<u8>,
    pos: usize,
    name: &'static str,
}

/// Two connected in-process ends: (host side, agent side).
pub fn in_proc_pair() -> (InProc, InProc) {
    let (a_tx, a_rx) = mpsc::channel();
    let (b_tx, b_rx) = mpsc::channel();
    (
        InProc {
            tx: a_tx,
            rx: b_rx,
            leftover: Vec::new(),
            pos: 0,
            name: "sim:host",
        },
        InProc {
            tx: b_tx,
            rx: a_rx,
            leftover: Vec::new(),
            pos: 0,
            name: "sim:agent",
        },
    )
}

impl Transport for InProc {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if self.pos >= self.leftover.len() {
            match self.rx.recv_timeout(timeout) {
                Ok(v) => {
                    self.leftover = v;
                    self.pos = 0;
                }
                Err(RecvTimeoutError::Timeout) => return Ok(0),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "in-process peer closed",
                    ));
                }
            }
        }
        let n = buf.len().min(self.leftover.len() - self.pos);
        buf[..n].copy_from_slice(&self.leftover[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    fn write(&mut self, buf: &[u8], _timeout: Duration) -> io::Result<usize> {
        self.tx
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "in-process peer closed"))?;
        Ok(buf.len())
    }

    fn describe(&self) -> String {
        self.name.into()
    }
}

fn poll_timeout(d: Duration) -> PollTimeout {
    PollTimeout::try_from(d.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
}

/// A non-blocking file descriptor: a pty master, or a serial port after `serialport` configured it.
pub struct FdTransport {
    fd: OwnedFd,
    name: String,
    line_rate: Option<u64>,
}

impl FdTransport {
    /// Takes ownership of `fd` and makes it non-blocking.
    pub fn new(fd: OwnedFd, name: String, line_rate: Option<u64>) -> io::Result<Self> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        use std::os::fd::AsRawFd;
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(FdTransport {
            fd,
            name,
            line_rate,
        })
    }

    fn wait(&self, events: PollFlags, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.fd.as_fd(), events)];
        match poll(&mut fds, poll_timeout(timeout)) {
            Ok(0) => Ok(false),
            Ok(_) => {
                let re = fds[0].revents().unwrap_or(PollFlags::empty());
                if re.intersects(events) {
                    Ok(true)
                } else if re
                    .intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                {
                    Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("{}: hang-up", self.name),
                    ))
                } else {
                    Ok(false)
                }
            }
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

impl Transport for FdTransport {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if !self.wait(PollFlags::POLLIN, timeout)? {
            return Ok(0);
        }
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.fd), buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: end of stream", self.name),
            )),
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(0),
            Err(e) => Err(io::Error::other(format!("{}: read: {e}", self.name))),
        }
    }

    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize> {
        if buf.is_empty() || !self.wait(PollFlags::POLLOUT, timeout)? {
            return Ok(0);
        }
        match nix::unistd::write(&self.fd, buf) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(0),
            Err(e) => Err(io::Error::other(format!("{}: write: {e}", self.name))),
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn line_rate(&self) -> Option<u64> {
        self.line_rate
    }
}

/// Open a serial device (the board's UART, or the agent's end of a pty) in raw 8N1 mode.
pub fn open_serial(path: &Path, baud: u32) -> io::Result<FdTransport> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let name = format!("serial:{}@{baud}", path.display());
    let port = serialport::new(path.to_string_lossy(), baud)
        .timeout(Duration::from_millis(100))
        .open_native()
        .map_err(|e| io::Error::other(format!("cannot open {name}: {e}")))?;
    // SAFETY: into_raw_fd hands over sole ownership of a valid open descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(port.into_raw_fd()) };
    FdTransport::new(fd, name, Some(u64::from(baud) / 10))
}

/// A fresh pseudo-terminal in raw mode: (master transport, slave path, slave descriptor).
///
/// Keep the slave descriptor open while the pair is in use: with no slave open, reads on the master
/// fail with EIO, which would look like a dead peer between two agent processes.
pub fn open_pty() -> io::Result<(FdTransport, PathBuf, OwnedFd)> {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let p = nix::pty::openpty(None, None).map_err(|e| io::Error::other(format!("openpty: {e}")))?;
    let mut t = tcgetattr(&p.slave).map_err(|e| io::Error::other(format!("pty tcgetattr: {e}")))?;
    // Raw mode before anyone writes: no echo, no line editing, no CR/LF translation.
    cfmakeraw(&mut t);
    tcsetattr(&p.slave, SetArg::TCSANOW, &t)
        .map_err(|e| io::Error::other(format!("pty tcsetattr: {e}")))?;
    let path = nix::unistd::ttyname(&p.slave)
        .map_err(|e| io::Error::other(format!("pty ttyname: {e}")))?;
    let master = FdTransport::new(p.master, format!("pty:{}", path.display()), None)?;
    Ok((master, path, p.slave))
}

/// A pty whose slave end is served by an agent process spawned here. Reads and writes fail as soon as
/// the process has exited, so a dead agent is noticed at once rather than after the silence timeout.
pub struct PtyChild {
    master: FdTransport,
    _slave: OwnedFd,
    child: Child,
    exited: Option<String>,
}

impl PtyChild {
    /// Spawn `program args...`, where any argument equal to `{port}` is replaced by the slave path.
    pub fn spawn(program: &Path, args: &[String]) -> io::Result<PtyChild> {
        let (master, path, slave) = open_pty()?;
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a == "{port}" {
                    path.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::other(format!("cannot start agent {}: {e}", program.display()))
            })?;
        Ok(PtyChild {
            master,
            _slave: slave,
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> io::Result<()> {
        if self.exited.is_none() {
            if let Some(st) = self.child.try_wait()? {
                self.exited = Some(st.to_string());
            }
        }
        match &self.exited {
            Some(st) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "agent process {} on {} exited ({st})",
                    self.child.id(),
                    self.master.name
                ),
            )),
            None => Ok(()),
        }
    }
}

impl Transport for PtyChild {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let n = self.master.read(buf, timeout)?;
        if n == 0 {
            self.check_alive()?;
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize> {
        self.check_alive()?;
        self.master.write(buf, timeout)
    }
    fn describe(&self) -> String {
        format!("{} (agent pid {})", self.master.name, self.child.id())
    }
    fn line_rate(&self) -> Option<u64> {
        self.master.line_rate()
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        // The agent serves only this pty; do not leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Emulates a serial line rate on writes (token bucket, 8N1: baud / 10 bytes per second).
pub struct Throttled<T> {
    inner: T,
    bytes_per_s: u64,
    start: Instant,
    sent: u64,
}

impl<T: Transport> Throttled<T> {
    pub fn new(inner: T, baud: u32) -> Self {
        Throttled {
            inner,
            bytes_per_s: (u64::from(baud) / 10).max(1),
            start: Instant::now(),
            sent: 0,
        }
    }

    fn budget(&mut self) -> u64 {
        let allowed = (self.start.elapsed().as_secs_f64() * self.bytes_per_s as f64) as u64;
        // No credit for idle time beyond a small burst (a UART cannot send faster after a pause).
        let burst = (self.bytes_per_s / 500).max(16);
        if allowed > self.sent + burst {
            self.sent = allowed - burst;
        }
        allowed.saturating_sub(self.sent)
    }
}

impl<T: Transport> Transport for Throttled<T> {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.inner.read(buf, timeout)
    }
    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize> {
        let mut b = self.budget();
        if b == 0 {
            let wait = Duration::from_secs_f64(1.0 / self.bytes_per_s as f64).min(timeout);
            std::thread::sleep(wait);
            b = self.budget();
            if b == 0 {
                return Ok(0);
            }
        }
        let n = self
            .inner
            .write(&buf[..buf.len().min(b as usize)], timeout)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn describe(&self) -> String {
        format!(
            "{} (throttled to {} B/s)",
            self.inner.describe(),
            self.bytes_per_s
        )
    }
    fn line_rate(&self) -> Option<u64> {
        Some(self.bytes_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_exact(t: &mut dyn Transport, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < n && Instant::now() < deadline {
            let k = t.read(&mut buf, Duration::from_millis(20)).unwrap();
            out.extend_from_slice(&buf[..k]);
        }
        out
    }

    #[test]
    fn in_proc_moves_bytes_and_reports_close() {
        let (mut a, mut b) = in_proc_pair();
        assert_eq!(a.write(b"hello", Duration::ZERO).unwrap(), 5);
        assert_eq!(read_exact(&mut b, 5), b"hello");
        assert_eq!(b.read(&mut [0; 4], Duration::from_millis(1)).unwrap(), 0);
        drop(a);
        assert!(b.read(&mut [0; 4], Duration::from_millis(1)).is_err());
        assert!(b.write(b"x", Duration::ZERO).is_err());
    }

    #[test]
    fn pty_is_raw_both_ways() {
        let (mut master, path, _slave) = open_pty().unwrap();
        let mut agent = open_serial(&path, 921_600).unwrap();
        // Bytes that a cooked tty would translate or swallow.
        let data: Vec<u8> = (0..=255u8)
            .chain([b'\r', b'\n', 3, 4, 0x11, 0x13])
            .collect();
        let mut off = 0;
        while off < data.len() {
            off += master
                .write(&data[off..], Duration::from_millis(50))
                .unwrap();
        }
        assert_eq!(read_exact(&mut agent, data.len()), data);
        let mut off = 0;
        while off < data.len() {
            off += agent
                .write(&data[off..], Duration::from_millis(50))
                .unwrap();
        }
        assert_eq!(read_exact(&mut master, data.len()), data);
        assert_eq!(agent.line_rate(), Some(92_160));
    }

    #[test]
    fn serial_open_error_names_the_device() {
        let e = open_serial(Path::new("/dev/e2t-no-such-port"), 9600)
            .err()
            .unwrap();
        assert!(e.to_string().contains("/dev/e2t-no-such-port"), "{e}");
    }
}
