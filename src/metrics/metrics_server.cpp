#include <utility>  // before Boost.Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <sstream>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"

namespace dnstap_collector {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;

namespace {
tcp::endpoint parse_endpoint(const std::string& host_port) {
    auto colon = host_port.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("metrics address '" + host_port + "' must be HOST:PORT");
    std::string host = host_port.substr(0, colon);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    boost::system::error_code ec;
    auto address = asio::ip::make_address(host.empty() ? "127.0.0.1" : host, ec);
    if (ec) throw std::runtime_error("metrics address '" + host_port + "': " + ec.message());
    int port = 0;
    try {
        port = std::stoi(host_port.substr(colon + 1));
    } catch (const std::exception&) {
        port = -1;
    }
    if (port <= 0 || port > 65535) throw std::runtime_error("metrics address '" + host_port + "': bad port");
    return {address, static_cast<unsigned short>(port)};
}

asio::awaitable<void> serve_scrape(tcp::socket socket, std::function<std::string()> render) {
    boost::beast::flat_buffer buffer;
    http::request<http::empty_body> request;
    boost::system::error_code ec;
    co_await http::async_read(socket, buffer, request, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(false);
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
        response.result(http::status::method_not_allowed);
    } else if (request.target() == "/metrics" || request.target() == "/") {
        response.result(http::status::ok);
        response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        response.body() = render();
    } else {
        response.result(http::status::not_found);
        response.body() = "try /metrics\n";
    }
    response.prepare_payload();
    co_await http::async_write(socket, response, asio::redirect_error(asio::use_awaitable, ec));
}
}  // namespace

struct MetricsServer::Impl {
    asio::io_context& io;
    tcp::endpoint endpoint;
    std::function<std::string()> render;
    tcp::acceptor acceptor;

    Impl(asio::io_context& i, const std::string& hp, std::function<std::string()> r)
        : io(i), endpoint(parse_endpoint(hp)), render(std::move(r)), acceptor(i) {}

    asio::awaitable<void> listen() {
        for (;;) {
            boost::system::error_code ec;
            tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
            if (ec) continue;
            asio::co_spawn(io, serve_scrape(std::move(socket), render), asio::detached);
        }
    }
};

MetricsServer::MetricsServer(asio::io_context& io, const std::string& host_port, std::function<std::string()> render)
    : impl_(std::make_unique<Impl>(io, host_port, std::move(render))) {}

MetricsServer::~MetricsServer() = default;

void MetricsServer::start() {
    boost::system::error_code ec;
    auto& a = impl_->acceptor;
    a.open(impl_->endpoint.protocol(), ec);
    if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) a.bind(impl_->endpoint, ec);
    if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        std::ostringstream where;
        where << impl_->endpoint;
        throw std::runtime_error("metrics listener " + where.str() + ": " + ec.message());
    }
    asio::co_spawn(impl_->io, impl_->listen(), asio::detached);
    std::ostringstream where;
    where << impl_->endpoint;
    log::info("metrics on http://" + where.str() + "/metrics");
}

void MetricsServer::stop() {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
}

}  // namespace dnstap_collector
