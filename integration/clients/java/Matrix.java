// Matrix runs the PgJDBC cells of pgverifyproxy's client compatibility
// matrix.
//
// Usage (single-file source launch, no build step; one JVM for all cells):
//
//	java -cp /usr/share/java/postgresql.jar Matrix.java QUERY NAME URL [NAME URL ...]
//
// For each NAME URL pair it connects with DriverManager.getConnection(URL)
// (user and password are URL parameters), runs QUERY, which must return one
// text value, and prints one line, fields separated by tabs:
//
//	NAME  ok     VALUE
//	NAME  error  SQLSTATE MESSAGE
//
// where MESSAGE is the exception's message (PgJDBC appends the server's
// Detail and Hint), newlines replaced by " / ". JDBC does not expose whether
// its own leg uses TLS, so an ok line has no tls field. The exit status is 0
// when every line was printed (whatever the outcomes), 2 on a usage error.
// pgverifyproxy's integration tests (integration/matrix_test.go) run it
// through the proxy.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class Matrix {
    public static void main(String[] args) {
        if (args.length < 3 || args.length % 2 != 1) {
            System.err.println("usage: java -cp postgresql.jar Matrix.java QUERY NAME URL [NAME URL ...]");
            System.exit(2);
        }
        String query = args[0];
        for (int i = 1; i < args.length; i += 2) {
            System.out.println(args[i] + "\t" + runCell(query, args[i + 1]));
            System.out.flush();
        }
    }

    // runCell connects, runs the query and returns the fields after NAME.
    static String runCell(String query, String url) {
        try (Connection conn = DriverManager.getConnection(url);
             Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery(query)) {
            if (!rs.next()) {
                return "error\t- the query returned no row";
            }
            return "ok\t" + rs.getString(1);
        } catch (SQLException e) {
            return "error\t" + e.getSQLState() + " " + oneLine(String.valueOf(e.getMessage()));
        }
    }

    // oneLine joins the non-empty lines of s with " / ".
    static String oneLine(String s) {
        StringBuilder b = new StringBuilder();
        for (String line : s.split("\\R")) {
            String t = line.trim();
            if (t.isEmpty()) {
                continue;
            }
            if (b.length() > 0) {
                b.append(" / ");
            }
            b.append(t);
        }
        return b.toString();
    }
}
