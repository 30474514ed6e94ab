"""Command line: `apiphant PRODUCT [HOST:PORT]` serves, `apiphant-background PRODUCT` runs tasks.

`apiphant new NAME`, `apiphant routes PRODUCT`, `apiphant openapi PRODUCT` and `apiphant migrate
PRODUCT` are the commands around serving; a first argument naming one of them is that command, anything else a product.

gevent must patch the standard library before anything else is imported (the product's blocking
libraries then become cooperative), so this module does it first: import it only as a program.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patch_all, on purpose)
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

from apiphant import (  # noqa: E402
    __version__,
    arguments,
    background,
    blocking,
    cors,
    health,
    lifespan,
    logs,
    openapi,
    reload,
    routes,
    scaffold,
    server,
    workers,
)
from apiphant.app import App  # noqa: E402

log = logging.getLogger('apiphant')

DEFAULT_ADDRESS = '127.0.0.1:8001'
_SIZE_UNITS = {'k': 1024, 'm': 1024 ** 2, 'g': 1024 ** 3}


def address(text):
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port)."""
    host, colon, port = text.rpartition(':')
    if host.startswith('[') and host.endswith(']'):
        host = host[1:-1]
    elif ':' in host:
        raise argparse.ArgumentTypeError(f'{text!r}: write an IPv6 address in brackets, as [::1]:8001')
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f'{text!r} is not HOST:PORT (port 0 to 65535)')
    return host, int(port)


def size(text):
    """Bytes, or with a k/m/g suffix like nginx's client_max_body_size: '1m'."""
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in _SIZE_UNITS else (text, '')
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a size in bytes (e.g. 1048576 or 1m)')
    return int(number) * _SIZE_UNITS.get(unit, 1)


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not a positive number of seconds')
    return value


def milliseconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 1 <= value < float('inf'):
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of milliseconds of at least 1')
    return value


def count(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of at least 1')
    return int(text)


def serve_parser():
    defaults = server.Options()
    parser = arguments.Parser(
        prog='apiphant', description='Serve a product as POST /api/{version}/{target}/{action}.',
        epilog='Each option can come from the environment variable in brackets instead (the command '
               'line wins; a switch takes 1 or 0, true or false; a repeatable option a list, as in '
               'APIPHANT_CORS="https://a.example https://b.example"). Other '
               'commands: `apiphant new NAME` creates a product, `apiphant routes PRODUCT` '
               'lists its routes, `apiphant openapi PRODUCT` prints its OpenAPI document, '
               '`apiphant migrate PRODUCT` applies its pending database migrations.')
    add_product_argument(parser)
    parser.add_argument('address', nargs='?', type=address, default=address(DEFAULT_ADDRESS),
                        help=f'HOST:PORT or [IPv6]:PORT to listen on (default {DEFAULT_ADDRESS})')
    parser.add_argument('--workers', type=count, default=defaults.workers,
                        help='processes sharing the port (default %(default)s)')
    parser.add_argument('--max-body', type=size, default=defaults.max_body,
                        help='largest request body in bytes, k/m/g suffix allowed (default 1m)')
    parser.add_argument('--idle-timeout', type=seconds, default=defaults.idle_timeout,
                        help='close a keep-alive connection idle this long (default %(default)s s)')
    parser.add_argument('--request-timeout', type=seconds, default=defaults.request_timeout,
                        help='a request must arrive whole this soon after its first byte '
                             '(default %(default)s s)')
    parser.add_argument('--drain-timeout', type=seconds, default=defaults.drain_timeout,
                        help='on SIGTERM, wait this long for in-flight requests (default %(default)s s)')
    parser.add_argument('--no-access-log', dest='access_log', action='store_false',
                        help='do not log a line per request')
    parser.add_argument('--cors', metavar='ORIGIN', type=allowed_origin, action='append',
                        help='let pages from ORIGIN (https://host[:port], https://*.example.com for its '
                             'subdomains, or * for any) call the API from a browser; repeat for several')
    parser.add_argument('--cors-credentials', action='store_true',
                        help='let those pages send cookies and HTTP authentication (not with --cors *)')
    parser.add_argument('--cors-expose-header', metavar='NAME', type=header_name, action='append',
                        help='let those pages read this response header too (X-Request-ID always); '
                             'repeat for several')
    parser.add_argument('--health-path', type=health_path, default=defaults.health_path,
                        help='answer 200 {"status": "up"} there, 503 while draining or while the '
                             "product's api/health.py check() fails (default %(default)s)")
    parser.add_argument('--metrics', action='store_true',
                        help='serve GET /metrics in Prometheus text format (needs apiphant[metrics])')
    parser.add_argument('--warn-blocking', metavar='MS', type=milliseconds,
                        help='log the action and stack that hold the event loop over MS milliseconds '
                             '(once per incident)')
    add_log_options(parser, defaults.log_format, '; the start-up line is always logged, '
                    'access lines unless --no-access-log')
    parser.add_argument('--reload', action='store_true',
                        help='restart when a .py file of the product changes (development only)')
    parser.add_argument('--version', action='version', version=f'apiphant {__version__}')
    return parser


def add_log_options(parser, log_format=logs.FORMATS[0], level_note=''):
    parser.add_argument('--log-format', choices=logs.FORMATS, default=log_format,
                        help='text, or json: one JSON object a line (default %(default)s)')
    parser.add_argument('--log-level', choices=logs.LEVELS, type=str.lower, default=logs.LEVELS[1],
                        help=f'the least severe record logged (default %(default)s{level_note})')


def add_product_argument(parser):
    parser.add_argument('product', help='path of the product package folder, or its import name')


def health_path(text):
    if not text.startswith('/') or text.startswith('/api/') or text == '/metrics' or not text.isprintable() \
            or ' ' in text:
        raise argparse.ArgumentTypeError(f'{text!r}: a path such as /up, outside /api/ and not /metrics')
    return text


def _argument_type(check):
    """`check`'s ValueError (it knows nothing of argparse) as argparse's one-line error."""
    def convert(text):
        try:
            return check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


allowed_origin = _argument_type(cors.origin)
header_name = _argument_type(cors.header_name)


def background_parser():
    parser = arguments.Parser(
        prog='apiphant-background', description="Run a product's background tasks (api/background).",
        epilog='Each option can come from the environment variable in brackets instead (the command line wins).')
    add_product_argument(parser)
    parser.add_argument('--stop-timeout', type=seconds, default=background.STOP_TIMEOUT,
                        help='on SIGTERM, wait this long for a running task (default %(default)s s)')
    add_log_options(parser)
    parser.add_argument('--version', action='version', version=f'apiphant {__version__}')
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        try:
            return COMMANDS[argv[0]](argv[1:])
        except BrokenPipeError:  # `apiphant openapi x | head`: the reader has had what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    parser = serve_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    folder = _locate(parser, args.product)
    if not args.cors and (args.cors_credentials or args.cors_expose_header):
        parser.error('--cors-credentials and --cors-expose-header need --cors ORIGIN')
    if args.cors_credentials and '*' in args.cors:
        parser.error('--cors-credentials cannot go with --cors *: any site could then act with the '
                     "user's cookies; list the origins")
    if args.reload and reload.ENVIRONMENT not in os.environ:  # (the child serves, whatever APIPHANT_RELOAD says)
        return reload.run(folder, [arg for arg in argv if arg != '--reload'])
    try:
        table = routes.discover(folder)
        check = health.load_check(folder)
        product_lifespan = lifespan.load(folder)
        host, port = args.address
        listener = server.listen(host, port)
    except routes.ProductError as error:
        return _fail(error)
    except OSError as error:
        return _fail(f'cannot listen on {host}:{port}: {error.strerror or error}')
    metrics_workers = metrics_for = None
    if args.metrics:
        try:
            from apiphant import metrics  # (an extra: a server without --metrics does not need it)
        except ImportError:
            return _fail('--metrics needs prometheus_client: pip install "apiphant[metrics]"')
        if args.workers > 1:
            metrics_workers = metrics.Workers()
        metrics_for = functools.partial(metrics.Metrics, routes=[*table, args.health_path, metrics.PATH],
                                        workers=metrics_workers)
    options = server.Options(max_body=args.max_body, idle_timeout=args.idle_timeout,
                             request_timeout=args.request_timeout, drain_timeout=args.drain_timeout,
                             access_log=args.access_log, workers=args.workers, log_format=args.log_format,
                             health_path=args.health_path, health_check=check,
                             metrics=metrics_for)
    _raise_fd_limit()
    if args.warn_blocking:
        blocking.watch(args.warn_blocking, table)
    app = App(table, max_body=options.max_body)
    if args.cors:
        app = cors.Cors(app, args.cors, args.cors_credentials, args.cors_expose_header)
    bound_host, bound_port = listener.getsockname()[:2]
    shown_host = f'[{bound_host}]' if ':' in bound_host else bound_host
    if not table:
        log.warning('no actions found under %s/api/v*/', folder)
    # Logged by the server once SIGTERM is handled: whoever waits for this line may signal at once.
    started = (f'apiphant {__version__} serving {folder.name} ({len(table)} routes) on '
               f'http://{shown_host}:{bound_port}/api/ (workers {options.workers}, max body {options.max_body}, '
               f'access log {"on" if options.access_log else "off"}'
               f'{", cors " + " ".join(args.cors) if args.cors else ""}'
               f'{" with credentials" if args.cors_credentials else ""}'
               f', health {args.health_path}{", metrics /metrics" if args.metrics else ""}'
               f'{f", warn blocking over {args.warn_blocking:g} ms" if args.warn_blocking else ""}'
               f'{", reload on: development only" if os.environ.get(reload.ENVIRONMENT) else ""})')
    if options.workers > 1:
        try:
            return workers.run_workers(app, listener, options, product_lifespan, started, metrics_workers)
        finally:
            if metrics_workers is not None:
                metrics_workers.close()
    return lifespan.run(product_lifespan, lambda: server.serve(app, listener, options, started))


def new_main(argv):
    parser = argparse.ArgumentParser(prog='apiphant new', description=(
        'Create the folder NAME: the product package NAME/NAME with a first target, its tests, '
        'requirements.txt and a deploy inventory, the name filled in everywhere.'))
    parser.add_argument('name', help='the product name: a lower-case Python package name')
    parser.add_argument('--db', choices=sorted(scaffold.DATABASES),
                        help='keep data in this database: an items target, its migration, tests against it')
    args = parser.parse_args(argv)
    try:
        root = scaffold.create(args.name, COMMANDS, database=args.db)
    except scaffold.ScaffoldError as error:
        parser.exit(2, f'apiphant new: {error}\n')
    if args.db:
        print(f'created {root}/: set DATABASE_URL as {root}/README.md says, then try `cd {root} && '
              f'apiphant migrate {args.name} && pytest`, then `apiphant {args.name} --reload`')
    else:
        print(f'created {root}/: try `cd {root} && pytest`, then `apiphant {args.name} --reload`')
    return 0


def routes_main(argv):
    table, folder = _load_for_command('routes', 'List every route with the first line of its docstring.', argv)
    if not table:
        print(f'apiphant routes: {folder.name} has no route: no action under {folder}/api/v*/', file=sys.stderr)
        return 1
    width = max((len(path) for path in table), default=0)
    for path, route in sorted(table.items()):
        method = 'ANY ' if route.raw_environ else 'POST'
        print(f'{method} {path:<{width}}  {route.summary}'.rstrip())
    return 0


def openapi_main(argv):
    table, folder = _load_for_command('openapi', 'Print the OpenAPI 3.1 document of the routes.', argv)
    version = getattr(sys.modules.get(folder.name), '__version__', '0')
    json.dump(openapi.document(folder.name, str(version), table), sys.stdout, indent=2)
    print()
    return 0


def _load_for_command(name, description, argv):
    parser = argparse.ArgumentParser(prog=f'apiphant {name}', description=description)
    add_product_argument(parser)
    args = parser.parse_args(argv)
    folder = _locate(parser, args.product)
    logging.basicConfig(format=f'apiphant {name}: %(levelname)s: %(message)s')  # discovery's warnings
    try:
        return routes.discover(folder), folder
    except routes.ProductError as error:
        parser.exit(1, f'apiphant {name}: {error}\n')


def migrate_main(argv):
    try:
        from apiphant import migrate  # (the postgresql extra: only this command needs it)
    except ImportError as error:
        print(f'apiphant migrate: {error}', file=sys.stderr)
        return 2
    parser = arguments.Parser(
        prog='apiphant migrate', description=(
            "Apply the product's pending migrations (PRODUCT/migrations/*.sql, yoyo-migrations' format) "
            'to the database DATABASE_URL names, each in a transaction of its own; one run at a time '
            'per database, a second waits for the first. Exit code 0 when none is left pending, '
            f'{migrate.FAILED} when a migration or the database failed, {migrate.UNUSABLE} when nothing '
            'could be tried.'),
        epilog='Each option can come from the environment variable in brackets instead (the command line wins).')
    add_product_argument(parser)
    parser.add_argument('--list', action='store_true', help='list the applied and pending migrations, apply none')
    parser.add_argument('--lock-timeout', type=seconds, default=migrate.LOCK_TIMEOUT,
                        help='wait this long for another run on the same database (default %(default)g s)')
    args = parser.parse_args(argv)
    folder = _locate(parser, args.product)
    try:
        result = migrate.run(
            os.environ.get('DATABASE_URL'), folder, apply=not args.list, lock_timeout=args.lock_timeout,
            on_wait=lambda: print(f'waiting for another apiphant migrate of this database '
                                  f'(at most {args.lock_timeout:g} s)', flush=True),
            on_applied=lambda name: print(f'applied {name}', flush=True))
    except migrate.MigrationError as error:
        print(f'apiphant migrate: {error}', file=sys.stderr)
        return error.code
    if args.list:
        for state, names in (('applied', result.already), ('pending', result.pending)):
            for name in names:
                print(f'{state}  {name}')
    print(f'{folder.name}: {len(result.applied)} applied now, {len(result.already)} before, '
          f'{len(result.pending)} pending')
    return 0


COMMANDS = {'new': new_main, 'routes': routes_main, 'openapi': openapi_main, 'migrate': migrate_main}


def background_main(argv=None):
    parser = background_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    folder = _locate(parser, args.product)
    try:
        module = background.load(folder)
        product_lifespan = lifespan.load(folder)
    except routes.ProductError as error:
        return _fail(error)
    return lifespan.run(product_lifespan, lambda: background.run(
        background.registered(), getattr(module, 'on_error', None), args.stop_timeout))


def _locate(parser, product):
    try:
        return routes.locate(product)
    except routes.ProductError as error:
        parser.error(str(error))


def _fail(error):
    log.error('%s', error)
    return 1


def _raise_fd_limit():
    """Tens of thousands of connections need as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning('cannot raise the file descriptor limit to %s: %s', hard, error)
