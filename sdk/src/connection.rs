//! One blocking connection to a Tally server: the socket, a read buffer that frames replies, and
//! the HELLO handshake every connection starts with.
//!
//! The connection knows nothing about requests in flight; `Exchange` keeps that window and tells
//! `recv` what the next reply must look like. Any error leaves the byte stream in an unknown state,
//! so callers drop the connection after one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use tally_proto::limits::FRAME_HEADER_BYTES;
use tally_proto::{FrameHeader, HelloReply, Opcode};

use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::limits::READ_BUFFER_BYTES;
use crate::options::ClientOptions;
use crate::response::{check_header, decode_frame, encode_hello, hello_from_reply, Expected};

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

pub(crate) struct Connection {
    stream: Stream,
    /// The address a TCP connection reached; shard connections go to the same host.
    peer: Option<SocketAddr>,
    /// Bytes read but not yet consumed are `read_buf[read_start..read_end]`.
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
}

impl Connection {
    /// Connects to `endpoint` and performs HELLO.
    pub(crate) fn open(endpoint: &Endpoint, options: &ClientOptions) -> Result<(Connection, HelloReply), Error> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let addrs = addr.to_socket_addrs().map_err(Error::from_io)?;
                let mut last_error = None;
                for addr in addrs {
                    match Connection::open_tcp(addr, options) {
                        Ok(opened) => return Ok(opened),
                        Err(error) => last_error = Some(error),
                    }
                }
                Err(last_error.unwrap_or_else(|| {
                    Error::from_io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{addr} resolves to no address"),
                    ))
                }))
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(Error::from_io)?;
                stream.set_read_timeout(options.read_timeout).map_err(Error::from_io)?;
                stream.set_write_timeout(options.read_timeout).map_err(Error::from_io)?;
                Connection::new(Stream::Unix(stream), None).handshake(options)
            }
        }
    }

    /// Connects to one TCP address and performs HELLO.
    pub(crate) fn open_tcp(addr: SocketAddr, options: &ClientOptions) -> Result<(Connection, HelloReply), Error> {
        let stream = TcpStream::connect_timeout(&addr, options.connect_timeout).map_err(Error::from_io)?;
        stream.set_nodelay(true).map_err(Error::from_io)?;
        stream.set_read_timeout(options.read_timeout).map_err(Error::from_io)?;
        stream.set_write_timeout(options.read_timeout).map_err(Error::from_io)?;
        Connection::new(Stream::Tcp(stream), Some(addr)).handshake(options)
    }

    fn new(stream: Stream, peer: Option<SocketAddr>) -> Connection {
        Connection {
            stream,
            peer,
            read_buf: vec![0; READ_BUFFER_BYTES],
            read_start: 0,
            read_end: 0,
        }
    }

    fn handshake(mut self, options: &ClientOptions) -> Result<(Connection, HelloReply), Error> {
        let mut buf = BytesMut::new();
        let expected = encode_hello(&mut buf, options.client_name.as_bytes());
        self.send(&buf)?;
        let (header, body) = self.recv(&expected)?;
        let mut replies = decode_frame(&header, body, [Opcode::Hello].into_iter())?;
        assert_eq!(replies.len(), 1);
        let hello = hello_from_reply(replies.pop().expect("one reply"))?;
        Ok((self, hello))
    }

    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Writes whole frames.
    pub(crate) fn send(&mut self, frames: &[u8]) -> Result<(), Error> {
        self.stream.write_all(frames).map_err(Error::from_io)
    }

    /// Reads the next frame, which must answer `expected`; returns its header and body.
    pub(crate) fn recv(&mut self, expected: &Expected) -> Result<(FrameHeader, &[u8]), Error> {
        self.fill(FRAME_HEADER_BYTES)?;
        let header = FrameHeader::parse(&self.read_buf[self.read_start..self.read_end]).map_err(Error::from_decode)?;
        check_header(&header, expected)?;
        let frame_bytes = FRAME_HEADER_BYTES + header.body_len as usize;
        self.fill(frame_bytes)?;
        let body_start = self.read_start + FRAME_HEADER_BYTES;
        self.read_start += frame_bytes;
        Ok((header, &self.read_buf[body_start..self.read_start]))
    }

    /// Reads until at least `need` unconsumed bytes are buffered. `need` is bounded by the caller's
    /// header check, so the buffer grows at most to the largest reply the client asked for.
    fn fill(&mut self, need: usize) -> Result<(), Error> {
        if self.read_end - self.read_start >= need {
            return Ok(());
        }
        if self.read_start > 0 {
            self.read_buf.copy_within(self.read_start..self.read_end, 0);
            self.read_end -= self.read_start;
            self.read_start = 0;
        }
        if self.read_buf.len() < need {
            self.read_buf.resize(need, 0);
        }
        while self.read_end < need {
            match self.stream.read(&mut self.read_buf[self.read_end..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(read) => self.read_end += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Error::from_io(error)),
            }
        }
        Ok(())
    }
}
