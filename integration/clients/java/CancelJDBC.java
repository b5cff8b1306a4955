// CancelJDBC cancels a running statement with JDBC's Statement.cancel().
//
// Usage (single-file source launch, no build step):
//
//	java -cp /usr/share/java/postgresql.jar CancelJDBC.java URL USER PASSWORD [MARKER]
//
// It runs "select pg_sleep(60) /* MARKER */" on one connection, waits on a
// second connection until the server shows that statement as active in
// pg_stat_activity, calls Statement.cancel() from another thread, and prints
//
//	SQLSTATE=<the SQLState of the statement's exception>
//	ELAPSED_MS=<how long the statement ran>
//	AFTER=<result of "select 41 + 1" on the same connection afterwards>
//
// The exit status is 0 when the statement was canceled with 57014 and the
// connection was still usable, 1 otherwise, 2 on a usage or setup error.
// pgverifyproxy's integration tests (integration/protocol_test.go) run it
// through the proxy.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

public class CancelJDBC {
    public static void main(String[] args) throws Exception {
        if (args.length < 3 || args.length > 4) {
            System.err.println("usage: java -cp postgresql.jar CancelJDBC.java URL USER PASSWORD [MARKER]");
            System.exit(2);
        }
        String url = args[0];
        String marker = args.length == 4 ? args[3] : "pgvp-jdbc-cancel";
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("connectTimeout", "20");

        try (Connection conn = DriverManager.getConnection(url, props);
             Connection watcher = DriverManager.getConnection(url, props)) {
            Statement stmt = conn.createStatement();
            AtomicReference<SQLException> failure = new AtomicReference<>();
            long start = System.nanoTime();
            Thread runner = new Thread(() -> {
                try {
                    stmt.execute("select pg_sleep(60) /* " + marker + " */");
                } catch (SQLException e) {
                    failure.set(e);
                }
            });
            runner.start();

            // Wait until the server runs the statement, then cancel it.
            boolean started = false;
            try (PreparedStatement poll = watcher.prepareStatement(
                    "select count(*) from pg_stat_activity where state = 'active' and query like ? and pid <> pg_backend_pid()")) {
                poll.setString(1, "%" + marker + "%");
                for (int i = 0; i < 600 && !started; i++) {
                    try (ResultSet rs = poll.executeQuery()) {
                        rs.next();
                        started = rs.getInt(1) > 0;
                    }
                    if (!started) {
                        Thread.sleep(50);
                    }
                }
            }
            if (!started) {
                System.out.println("ERROR=the statement never showed up in pg_stat_activity");
                System.exit(2);
            }
            Thread canceler = new Thread(() -> {
                try {
                    stmt.cancel();
                } catch (SQLException e) {
                    System.out.println("CANCEL_ERROR=" + e.getSQLState() + " " + e.getMessage());
                }
            });
            canceler.start();
            canceler.join();
            runner.join(30_000);
            if (runner.isAlive()) {
                System.out.println("ERROR=the statement was still running 30s after cancel()");
                System.exit(1);
            }
            long elapsedMs = (System.nanoTime() - start) / 1_000_000;
            SQLException e = failure.get();
            String state = e == null ? "none" : e.getSQLState();
            System.out.println("SQLSTATE=" + state);
            if (e != null) {
                System.out.println("MESSAGE=" + e.getMessage().replace('\n', ' '));
            }
            System.out.println("ELAPSED_MS=" + elapsedMs);

            int after;
            try (Statement s2 = conn.createStatement(); ResultSet rs = s2.executeQuery("select 41 + 1")) {
                rs.next();
                after = rs.getInt(1);
            }
            System.out.println("AFTER=" + after);
            System.exit("57014".equals(state) && after == 42 ? 0 : 1);
        }
    }
}
